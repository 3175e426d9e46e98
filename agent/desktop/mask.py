"""Opaque boxes over what a frame must not show, placed from the accessibility tree read as the
frame is taken.

Which elements: a task's `mask:` list (`{field: Card number}`, `{role: password text}`: the
accessible name or label holds `field`, the role is `role`, as allow.secrets places match); with
no `mask:` and a model outside this process that sees the frames (`--backend openai`: the server
may be anywhere), every password field. `mask: []` masks nothing.

The desktop masks the frame it captures (agent.desktop.x11.X11Desktop.capture), so the model, the
trace, the flow cache and the console all get the masked frame: nothing downstream can send or keep
the pixels under a box. Fail closed: when masking is asked for and the display has no
accessibility bus, or its tree cannot be read, the run stops with MaskError before a frame goes
out. A tree that knows none of the windows showing (apps that publish none: Tk, xterm) stops a run
whose task lists `mask:`; with the remote default it is said once, and frames go (such apps'
password fields show stars). Beside an app that publishes a tree, one that does not is not covered.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

from actions.policy import SecretPlace
from agent.errors import VlagentError

PASSWORD_FIELDS = (SecretPlace(role="password text"),)
PAD_PX = 2  # the box covers the element's border too: a caret or a glyph's edge can sit on it
FILL = (0, 0, 0)


class MaskError(VlagentError):
    """A frame must be masked and cannot be (no accessibility tree to place the boxes)."""


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
    """Masks frames of one display: `masker(image) -> image`, reading `tree` (sandbox.atspi.Tree).
    `listed`: the task named what to mask (a tree that knows no window then stops too)."""

    tree: object
    wanted: tuple[SecretPlace, ...]
    why: str  # for whom the frames are masked, for the stop's line
    listed: bool = True
    said: bool = False

    def __call__(self, image, nodes=None):
        """`nodes`: the tree as it was when `image` was taken, where the caller kept it (a recording);
        else it is read now."""
        nodes = self.tree.read() if nodes is None else nodes
        if nodes is None:
            self.stop("cannot read the accessibility tree")
        if not nodes and _windows_showing(self.tree.display):
            why = "the accessibility tree knows none of the windows showing (apps that publish none: Tk, xterm)"
            if self.listed:
                self.stop(why)
            if not self.said:
                self.said = True
                print(f"{self.tree.display}: {why}: their password fields cannot be masked in frames {self.why}",
                      file=sys.stderr, flush=True)
        return paint(image, boxes(nodes, self.wanted))

    def stop(self, why: str):
        what = "; ".join(p.describe() for p in self.wanted)
        raise MaskError(f"{self.tree.display}: {why}, so the elements to mask ({what}) cannot be found in frames "
                        f"{self.why}: stopped, no frame sent (`mask: []` in the task sends frames unmasked)")


def masker_for(display: str, tree, wanted, why: str, listed: bool) -> Masker:
    """A Masker for `display`; MaskError at once when the display has no accessibility bus."""
    from sandbox.a11y import announced

    masker = Masker(tree, tuple(wanted), why, listed)
    if not announced(display):
        masker.stop("the display has no accessibility bus (is at-spi2-core installed?)")
    return masker


def _windows_showing(display: str) -> bool:
    from sandbox.windows import list_windows

    try:
        return bool(list_windows(display))
    except Exception:  # noqa: BLE001 (a display that cannot be asked cannot vouch: as if windows showed)
        return True


def mask_frames(desktop, task, backend) -> None:
    """Make `desktop` mask every frame it captures for a run of `task` with `backend`."""
    wanted = places(task, backend)
    if not wanted:
        return
    if not hasattr(desktop, "tree"):
        raise MaskError(f"the frames must be masked ({'; '.join(p.describe() for p in wanted)}), and this desktop "
                        "has no accessibility tree to place the boxes: stopped")
    why = f"sent to {getattr(backend, 'base_url', '') or 'the model'}" if getattr(backend, "remote", False) \
        else "the model sees and the trace keeps"
    desktop.masker = masker_for(desktop.display, desktop.tree(), wanted, why, getattr(task, "mask", None) is not None)


__all__ = ["MaskError", "Masker", "PASSWORD_FIELDS", "boxes", "mask_frames", "masker_for", "paint", "places"]
