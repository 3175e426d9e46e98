"""The one gate every action passes before it reaches a desktop, whoever proposed it: the model's
loop, replay, the flow cache, a model fall-back, the Python API, the console.

    action = gate.check(action, probe, policy, frame=frame.size)   # or raises PolicyError(reason)

It runs the task's policy (actions.policy: kinds, keys, text, waits) and then asks the desktop's
probe which window will *receive* the input:
- a pointer action: the window at its coordinate (both ends of a drag; the pointer's place when it
  has none); a middle-click pastes there, whatever has the keyboard focus;
- `key` and `type`: the window with the keyboard focus.
A receiver that is a terminal, a shell or an interpreter (judged by the probe from WM_CLASS and the
window owner's process tree) refuses the action unless the task sets `allow.terminal`. When the
probe cannot tell (a window gone, an owner it cannot read) the action is refused with that reason:
the gate fails closed. `probe=None` means there is no desktop (`vlagent check-action`): nothing
receives the input, and only the policy applies.

Secrets: a `type` holding `{secret:NAME}` passes only when NAME is declared by the run's task (the
policy carries the names: Policy(task.allow, task.secrets)), the text is the placeholder alone (no secret inside a URL or a
sentence), and, where the task names a place (allow.secrets), the focused field is that place.
"""
from __future__ import annotations

import re
from typing import Callable, Protocol

from actions.coords import SCALE, to_pixels
from actions.parse import ParseError, parse_action
from actions.policy import Focus, Policy, PolicyError, SecretPlace
from actions.schema import Action, Coordinate

PLACEHOLDER = re.compile(r"\{secret:([A-Za-z_]\w{0,63})\}")
# Fields whose content is shown as typed: a secret with no declared place is not typed into one.
CLEAR_TEXT_ROLES = frozenset({"text", "entry", "document text", "terminal", "editbar", "combo box", "spin button"})


class Probe(Protocol):
    """What the gate asks a desktop (agent.desktop.x11.X11Desktop implements it). Coordinates are
    screen pixels. A method returns None when it cannot tell; the gate then refuses."""

    def size(self) -> tuple[int, int]: ...

    def position(self) -> tuple[int, int]: ...

    def window_at(self, x: int, y: int) -> Focus | None: ...

    def focused_window(self) -> Focus | None: ...

    # optional: the focused element of the accessibility tree, {"role", "name", "label"}, for secrets
    # whose place the task names (allow.secrets)


def probe_of(desktop) -> Probe | None:
    """The desktop itself when it can answer the gate's questions, else None (a test's fake)."""
    return desktop if all(hasattr(desktop, m) for m in ("window_at", "focused_window", "size", "position")) else None


def screen_point(coord: Coordinate, frame: tuple[int, int], screen: tuple[int, int]) -> tuple[int, int]:
    """Where the executor will act: 0..1000 -> a pixel of the frame -> the same spot on the screen
    (agent.run.executor.screen_point does the same; both use actions.coords)."""
    fx, fy = to_pixels(coord, frame)
    if tuple(frame) == tuple(screen):
        return fx, fy
    fw, fh = frame
    return to_pixels(((fx + 0.5) / fw * SCALE, (fy + 0.5) / fh * SCALE), screen)


def check(action: Action, probe: Probe | None, policy: Policy, frame: tuple[int, int] | None = None) -> Action:
    """Return the action when it may run now, else raise PolicyError with the reason.
    `frame`: the size of the frame its 0..1000 coordinates refer to (default: the screen)."""
    action = policy.check(action)
    if action.action in ("type", "answer") and _broken_unicode(action.text):
        raise PolicyError("the text holds invalid Unicode (a lone surrogate, or U+FFFD where bytes did not decode)")
    if action.action == "type":
        _check_secrets(action.text, policy)
    if probe is None:
        return action
    allow_terminal = policy.allow.terminal
    try:
        match action.action:
            case "key" | "type":
                what = "typing" if action.action == "type" else "key presses"
                window = probe.focused_window()
                if window is None:
                    raise PolicyError(f"cannot tell which window would receive the {what}: refused")
                if window.nowhere and action.action == "type":
                    raise PolicyError("typing now would reach no window: nothing has the keyboard focus and the "
                                      "pointer is over the bare desktop; click the field to type into first")
                _receiver(window, what, allow_terminal)
                if action.action == "type" and PLACEHOLDER.search(action.text):
                    _secret_place(action.text, probe, policy)
            case "wait" | "terminate" | "answer":
                pass
            case _:
                screen = probe.size()
                frame = tuple(frame or screen)
                if action.action == "left_click_drag":  # both ends; no start: it starts where the pointer is
                    points = [action.start_coordinate, action.coordinate]
                else:
                    points = [getattr(action, "coordinate", None)]
                for coord in points:
                    pixel = probe.position() if coord is None else screen_point(tuple(coord), frame, screen)
                    window = probe.window_at(*pixel)
                    if window is None:
                        raise PolicyError(f"cannot tell which window is at {pixel}, where the {action.action} "
                                          "would land: refused")
                    _receiver(window, f"a {action.action} at {pixel}", allow_terminal)
    except PolicyError:
        raise
    except Exception as e:  # a probe that fails cannot vouch for anything
        raise PolicyError(f"cannot tell which window would receive the {action.action} "
                          f"({type(e).__name__}): refused") from None
    return action


def check_reply(reply: str, probe: Probe | None, policy: Policy, frame: tuple[int, int] | None = None,
                resolve: Callable[[Action], Action] | None = None) -> Action:
    """Parse a raw reply and pass it through the gate. Raises ParseError or PolicyError only.
    `resolve` turns an element mark into a point first (--marks), so that the gate judges the point."""
    if isinstance(reply, str) and _broken_unicode(reply):
        raise ParseError("the reply holds invalid Unicode (a lone surrogate, or U+FFFD where bytes did not decode)")
    try:
        action = parse_action(reply)
    except ParseError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError, UnicodeError) as e:
        raise ParseError(f"the reply could not be checked: {type(e).__name__}") from None
    return check(resolve(action) if resolve is not None else action, probe, policy, frame)


def _broken_unicode(text: str) -> bool:
    """A server's lone surrogate (recorded as U+FFFD) or undecodable bytes: not a reply to act on."""
    return "\ufffd" in text or any("\ud800" <= ch <= "\udfff" for ch in text)


def _receiver(window: Focus, what: str, allow_terminal: bool) -> None:
    if not allow_terminal and window.is_terminal():
        raise PolicyError(f"{what} would go to a terminal or shell window ({window.describe()[:60]!r}: "
                          f"{window.why_terminal()}); not allowed (allow.terminal in the task)")


def _check_secrets(text: str, policy: Policy) -> None:
    names = PLACEHOLDER.findall(text)
    if not names:
        return
    if PLACEHOLDER.fullmatch(text) is None:
        raise PolicyError("a secret may only be typed alone, as the whole text of a type action "
                          "(not inside other text)")
    name = names[0]
    places = policy.allow.secrets
    if name not in policy.secrets and (places is None or name not in places):
        raise PolicyError(f"the secret {name!r} is not one the task declares (secrets:)")


def _secret_place(text: str, probe: Probe, policy: Policy) -> None:
    """The focused field must be the place the task names for this secret (allow.secrets)."""
    name = PLACEHOLDER.fullmatch(text).group(1)
    place: SecretPlace | None = (policy.allow.secrets or {}).get(name)
    ask = getattr(probe, "focused_field", None)
    field = ask() if ask is not None else None
    if place is None:  # no place named: never into a field an accessibility tree shows as plain text
        role = (field or {}).get("role") or ""
        if role in CLEAR_TEXT_ROLES:
            raise PolicyError(f"the secret {name!r} would show in clear in a {role} field "
                              f"({(field.get('name') or field.get('label') or '')[:40]!r}); name its place in the "
                              "task's allow.secrets to type it there")
        return
    if field is None:
        raise PolicyError(f"cannot tell which field has the focus, so the secret {name!r} is not typed "
                          f"(the task allows it only into {place.describe()})")
    if not place.matches(field):
        raise PolicyError(f"the secret {name!r} may only be typed into {place.describe()}; the focused field is "
                          f"{field.get('role') or '?'} {field.get('name') or field.get('label') or ''!r}")


__all__ = ["Probe", "check", "check_reply", "probe_of", "screen_point"]
