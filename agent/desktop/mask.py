"""Opaque boxes over what a frame must not show, placed from the accessibility tree read as the
frame is taken.

Which elements: a task's `mask:` list (`{field: Card number}`, `{role: password text}`: the
accessible name or label holds `field`, the role is `role`, as allow.secrets places match); with
no `mask:` and a model outside this process that sees the frames (`--backend openai`: the server
may be anywhere), every password field. `mask: []` masks nothing.

The desktop masks the frame it captures (agent.desktop.x11.X11Desktop.capture), so the model, the
trace, the flow cache and the console all get the masked frame: nothing downstream can send or keep
the pixels under a box. When masking is asked for and the tree cannot be read, capture stops the
run with MaskError (fail closed): an unmasked frame never goes out. An app that publishes no tree
(Tk, xterm) shows no element to mask: its fields are not covered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from actions.policy import SecretPlace
from agent.errors import VlagentError

PASSWORD_FIELDS = (SecretPlace(role="password text"),)
PAD_PX = 2  # the box covers the element's border too: a caret or a glyph's edge can sit on it
FILL = (0, 0, 0)


class MaskError(VlagentError):
    """A frame must be masked and cannot be (the accessibility tree cannot be read)."""


def places(task, backend) -> tuple[SecretPlace, ...]:
    """What the frames of a run of `task` with `backend` hide: the task's `mask:` list, else password
    fields when the backend sends frames out of this process."""
    listed = getattr(task, "mask", None)
    if listed is not None:
        return tuple(listed)
    return PASSWORD_FIELDS if getattr(backend, "remote", False) else ()


def boxes(nodes, wanted: Sequence[SecretPlace]) -> list[tuple[int, int, int, int]]:
    """Screen boxes (x, y, w, h) of the showing elements one of `wanted` matches."""
    from sandbox.atspi import label

    out = []
    for n in nodes:
        if n.box[2] <= 0 or n.box[3] <= 0:
            continue
        # A place named by its field alone is an input (editable or focusable), not the label naming
        # it nor the pane around it; a place with a role is whatever has that role.
        field = "editable" in n.states or "focusable" in n.states
        element = {"role": n.role, "name": n.name, "label": label(nodes, n) if field else ""}
        if any((p.role or field) and p.matches(element) for p in wanted):
            out.append(tuple(n.box))
    return out


def paint(image, covered):
    """A copy of `image` with an opaque box over each of `covered` (or the image itself: none)."""
    if not covered:
        return image
    from PIL import ImageDraw

    image = image.copy()
    draw = ImageDraw.Draw(image)
    for x, y, w, h in covered:
        draw.rectangle((x - PAD_PX, y - PAD_PX, x + w - 1 + PAD_PX, y + h - 1 + PAD_PX), fill=FILL)
    return image


@dataclass
class Masker:
    """Masks frames of one display: `masker(image) -> image`, reading `tree` (sandbox.atspi.Tree)."""

    tree: object
    wanted: tuple[SecretPlace, ...]
    why: str  # for whom the frames are masked, for the stop's line

    def __call__(self, image):
        nodes = self.tree.read()
        if nodes is None:
            what = "; ".join(p.describe() for p in self.wanted)
            raise MaskError(f"cannot read the accessibility tree of {self.tree.display}, so the elements to mask "
                            f"({what}) cannot be found in frames {self.why}: stopped (an unmasked frame is not sent; `mask: []` in the task "
                            "sends frames as they are)")
        return paint(image, boxes(nodes, self.wanted))


def mask_frames(desktop, task, backend) -> None:
    """Make `desktop` mask every frame it captures for a run of `task` with `backend` (a desktop that
    cannot, a test's fake, is left as it is only when nothing needs masking)."""
    wanted = places(task, backend)
    if not wanted:
        return
    if not hasattr(desktop, "tree"):
        raise MaskError(f"the frames must be masked ({', '.join(p.describe() for p in wanted)}), and this desktop "
                        "has no accessibility tree to place the boxes: stopped")
    why = f"sent to {getattr(backend, 'base_url', '') or 'the model'}" if getattr(backend, "remote", False) \
        else "the model sees and the trace keeps"
    desktop.masker = Masker(desktop.tree(), wanted, why)


__all__ = ["MaskError", "Masker", "PASSWORD_FIELDS", "boxes", "mask_frames", "paint", "places"]
