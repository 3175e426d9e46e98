"""The action vocabulary: schema (one pydantic model per action), parser, policy and coordinates."""
from actions.coords import to_pixels
from actions.parse import ParseError, parse_action
from actions.policy import Allow, Focus, Policy, PolicyError
from actions.schema import ACTION_ADAPTER, ACTION_NAMES, POINTER_ACTIONS, Action, to_json

__all__ = ["ACTION_ADAPTER", "ACTION_NAMES", "POINTER_ACTIONS", "Action", "Allow", "ParseError",
           "Focus", "Policy", "PolicyError", "parse_action", "to_json", "to_pixels", "check_reply"]


def check_reply(reply: str, policy: Policy, focus=None, frame=None, resolve=None) -> Action:
    """Parse a raw reply and pass it through the gate (actions.gate.check) when `focus` is a desktop
    that can probe its windows (the loop passes its desktop and the frame's size); a callable
    `focus` is the older focus-only probe (see Policy.check). Raises ParseError or PolicyError, and
    nothing else: whatever a model sends is a rejected reply. `resolve` (--marks) turns a click at an
    element mark into a click at a point before the gate sees it."""
    from actions import gate

    probe = gate.probe_of(focus)
    if probe is not None or (focus is not None and not callable(focus)):
        return gate.check_reply(reply, probe, policy, frame, resolve)
    try:
        action = parse_action(reply)
        return policy.check(resolve(action) if resolve is not None else action, focus)
    except (ParseError, PolicyError):
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError, UnicodeError) as e:
        raise ParseError(f"the reply could not be checked: {type(e).__name__}") from None
