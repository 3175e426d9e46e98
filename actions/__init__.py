"""The action vocabulary: schema (one pydantic model per action), parser, policy and coordinates."""
from actions.coords import to_pixels
from actions.parse import ParseError, parse_action
from actions.policy import Allow, Policy, PolicyError
from actions.schema import ACTION_ADAPTER, ACTION_NAMES, POINTER_ACTIONS, Action, to_json

__all__ = ["ACTION_ADAPTER", "ACTION_NAMES", "POINTER_ACTIONS", "Action", "Allow", "ParseError",
           "Policy", "PolicyError", "parse_action", "to_json", "to_pixels", "check_reply"]


def check_reply(reply: str, policy: Policy) -> Action:
    """Parse a raw reply and pass it through the policy. Raises ParseError or PolicyError."""
    return policy.check(parse_action(reply))
