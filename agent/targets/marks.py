"""Element marks (`--marks`): numbered marks on the interactive elements of a frame, from the
accessibility tree, so that the model may answer a number instead of a coordinate.

    marks = pick(nodes, screen)                  # the tree read right after the frame was captured
    shown = draw(frame, marks, screen)           # what the model sees
    note = listing(marks)                        # the prompt's list: number, role, name
    node, point = resolve(mark, tree_now, screen)  # at action time, on a fresh read of the tree

A mark names an element by what it is (role, name, app, window, the roles above it), never by
where it was: at action time the element is found again in a fresh tree and clicked at its centre
there. Gone, ambiguous or covered: refused with the reason (a PolicyError the model reads), never
a click at the point it had when the frame was taken. Apps without a tree (Tk, games, remote
screens) get no marks; the model answers with coordinates as without --marks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from actions.policy import PolicyError
from actions.schema import MAX_MARKS
from sandbox.atspi import LABELS, NAME_AGREES, WINDOW_ROLES, Node, describe, element_at, similar

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
# Roles a person clicks (text-like roles only where editable: a calculator's display is not).
CLICKABLE = {"push button", "toggle button", "radio button", "check box", "menu item", "radio menu item",
             "check menu item", "menu", "link", "combo box", "spin button", "list item", "page tab", "slider",
             "tree item", "table cell", "icon"}
EDITABLE = {"text", "entry", "password text", "document text", "spin button"}
MIN_SIDE_PX = 4  # smaller boxes are decorations or collapsed widgets
ROW_PX = 8  # elements whose tops differ by less are one row when numbering in reading order
MAX_NAME_CHARS = 60  # a name in the prompt's list (a link's whole paragraph is cut)
# Tag colours: white bold digits on a saturated fill (contrast >= 4.5:1), a white rim so that the
# tag stands out on dark themes as well as light ones; neighbours alternate colours.
FILLS = ((200, 0, 100), (0, 80, 200), (0, 120, 60), (170, 70, 0))
TEXT_RGB = (255, 255, 255)
RIM_RGB = (255, 255, 255)
OUTLINE_PX = 2
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
FONT_PX_AT_800 = 13  # digits this tall on an 800-px-high frame, scaled with the frame


@dataclass(frozen=True)
class Mark:
    n: int
    role: str
    name: str
    app: str
    window: str  # the accessible name of its window
    path: tuple[str, ...]  # roles from its parent up to its window
    box: tuple[int, int, int, int]  # x, y, w, h in screen pixels when the frame was taken
    order: tuple[int, int]  # (k, count): the k-th of `count` elements alike (same role, name, app, window, path)
    place: tuple[float, float]  # its centre relative to its window's box when the frame was taken
    label: str = ""  # an unnamed element's label (left of or above it): how the prompt names it

    def says(self) -> str:
        if self.name:
            return f"{self.role} {self.name[:MAX_NAME_CHARS]!r}"
        return f"{self.role} labelled {self.label[:MAX_NAME_CHARS]!r}" if self.label else f"unnamed {self.role}"

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Marked:
    """A frame's marks: the image the model sees, the marks, the prompt's note, the time it took."""

    image: Image.Image
    marks: tuple[Mark, ...]
    note: str
    nodes: list[Node]
    tree_ms: float
    draw_ms: float

    def get(self, n: int) -> Mark | None:
        return next((m for m in self.marks if m.n == n), None)


def _window(nodes: list[Node], n: Node) -> Node | None:
    while n.parent >= 0:
        p = nodes[n.parent]
        if p.parent < 0:
            return n
        n = p
    return None


def _ancestors(nodes: list[Node], n: Node) -> list[Node]:
    out = []
    while n.parent >= 0:
        n = nodes[n.parent]
        out.append(n)
    return out


def _path(nodes: list[Node], n: Node) -> tuple[str, ...]:
    return tuple(m.role for m in _ancestors(nodes, n) if m.role not in WINDOW_ROLES and m.parent >= 0)[:6]


def _markable(n: Node) -> bool:
    return n.depth >= 3 and n.box[2] >= MIN_SIDE_PX and n.box[3] >= MIN_SIDE_PX and (
        n.role in CLICKABLE or (n.role in EDITABLE and "editable" in n.states))


def _on_screen(n: Node, screen: tuple[int, int]) -> bool:
    cx, cy = n.centre
    return 0 <= cx < screen[0] and 0 <= cy < screen[1]


def _shown(nodes: list[Node], n: Node) -> bool:
    """A click at its centre acts on it: the element there is n or inside n (not a window over it)."""
    hit = element_at(nodes, n.centre)
    return hit is not None and (hit.i == n.i or any(a.i == n.i for a in _ancestors(nodes, hit)))


def _signature(nodes: list[Node], n: Node) -> tuple:
    win = _window(nodes, n)
    return n.role, n.name.strip(), n.app, win.name if win is not None else "", _path(nodes, n)


def _place(nodes: list[Node], n: Node) -> tuple[float, float]:
    win = _window(nodes, n)
    wx, wy, ww, wh = win.box if win is not None else (0, 0, 1, 1)
    return round((n.centre[0] - wx) / max(ww, 1), 3), round((n.centre[1] - wy) / max(wh, 1), 3)


def _label(nodes: list[Node], n: Node) -> str:
    ev = describe(nodes, n.centre)
    return next((l["text"] for l in (ev or {}).get("labels", []) if l["side"] in ("left", "above")), "")


def pick(nodes: list[Node], screen: tuple[int, int]) -> tuple[Mark, ...]:
    """The interactive elements a click at their centre reaches, numbered in reading order (rows
    top to bottom, left to right), at most MAX_MARKS."""
    cands, boxes = [], set()
    for n in nodes:
        if _markable(n) and _on_screen(n, screen) and n.box not in boxes and _shown(nodes, n):
            boxes.add(n.box)  # a popup's items are listed twice; a control and its twin share a box
            cands.append(n)
    cands.sort(key=lambda n: (n.box[1] // ROW_PX, n.box[0], n.i))
    cands = cands[:MAX_MARKS]
    alike: dict[tuple, list[Node]] = {}
    for n in nodes:  # look-alikes in tree order, marked or not (the same count is read at action time)
        if _markable(n):
            alike.setdefault(_signature(nodes, n), []).append(n)
    out = []
    for k, n in enumerate(cands, 1):
        sig = _signature(nodes, n)
        group = [m.i for m in alike[sig]]
        out.append(Mark(k, n.role, n.name.strip(), n.app, sig[3], sig[4], n.box, (group.index(n.i), len(group)),
                        _place(nodes, n), "" if n.name.strip() else _label(nodes, n)))
    return tuple(out)


@cache
def _font(px: int):
    try:
        return ImageFont.truetype(FONT, px)
    except OSError:
        return ImageFont.load_default(size=px)


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw(frame: Image.Image, marks: tuple[Mark, ...], screen: tuple[int, int], labels=()) -> Image.Image:
    """A copy of the frame with each mark's element outlined and its number in a tag beside it:
    above its top-left corner where there is room, else left of it, below it, at its right-hand
    corners, and only last inside it, so that the element's own label and the texts around it
    (`labels`: boxes in screen pixels) stay readable."""
    img = frame.convert("RGB")
    d = ImageDraw.Draw(img)
    sx, sy = frame.width / screen[0], frame.height / screen[1]
    texts = [(x * sx, y * sy, (x + w) * sx, (y + h) * sy) for x, y, w, h in labels]
    font = _font(max(9, round(FONT_PX_AT_800 * frame.height / 800)))
    placed: list[tuple[int, int, int, int]] = []
    boxes = [(m.box[0] * sx, m.box[1] * sy, (m.box[0] + m.box[2]) * sx, (m.box[1] + m.box[3]) * sy) for m in marks]
    for m, (x1, y1, x2, y2) in zip(marks, boxes):
        fill = FILLS[m.n % len(FILLS)]
        d.rectangle((x1, y1, x2 - 1, y2 - 1), outline=fill, width=OUTLINE_PX)
        left, top, right, bottom = d.textbbox((0, 0), str(m.n), font=font)
        tw, th = right - left + 6, bottom - top + 4
        spots = [(x1, y1 - th), (x1 - tw, y1), (x1, y2), (x2 - tw, y1 - th), (x2, y1), (x2 - tw, y2), (x1 + 1, y1 + 1)]
        fits = lambda r: r[0] >= 0 and r[1] >= 0 and r[2] <= img.width and r[3] <= img.height  # noqa: E731
        rects = [(round(x), round(y), round(x) + tw, round(y) + th) for x, y in spots]
        free = [r for r in rects[:-1] if fits(r) and not any(_overlaps(r, p) for p in placed)
                and not any(_overlaps(r, b) for b in boxes + texts)]
        r = free[0] if free else next((r for r in rects[:-1] if fits(r) and not any(_overlaps(r, p) for p in placed)),
                                      rects[-1])
        placed.append(r)
        d.rectangle((r[0] - 1, r[1] - 1, r[2], r[3]), fill=RIM_RGB)
        d.rectangle(r, fill=fill)
        d.text((r[0] + 3 - left, r[1] + 2 - top), str(m.n), font=font, fill=TEXT_RGB)
    return img


@cache
def _prompt(name: str) -> str:
    return (PROMPTS / name).read_text(encoding="utf-8").strip()


def listing(marks: tuple[Mark, ...]) -> str:
    """The prompt's note for this frame: its marks, one a line, or that there are none."""
    if not marks:
        return _prompt("marks_none.md")
    lines = "\n".join(f"[{m.n}] {m.says()}" for m in marks)
    return _prompt("marks.md").replace("{marks}", lines)


def look(nodes: list[Node], frame: Image.Image, screen: tuple[int, int], tree_ms: float = 0.0) -> Marked:
    import time

    t0 = time.perf_counter()
    marks = pick(nodes, screen)
    labels = [n.box for n in nodes if n.role in LABELS and n.name.strip()]
    image = draw(frame, marks, screen, labels) if marks else frame
    return Marked(image, marks, listing(marks), nodes, tree_ms, (time.perf_counter() - t0) * 1e3)


def resolve(mark: Mark, nodes: list[Node], screen: tuple[int, int], windows: list | None = None) -> Node:
    """The marked element in a tree read now, or PolicyError with the reason: gone, ambiguous (its
    look-alikes changed in number or place), off the screen or covered by something else.
    `windows` (the X server's viewable top-level windows, bottom first): the topmost one at the
    element's centre must be the element's own (the tree can lag: an unmapped window's widgets may
    still say they are showing)."""
    what = f"mark {mark.n} ({mark.says()})"
    sig = (mark.role, mark.name, mark.app, mark.window, mark.path)
    alike = [n for n in nodes if _markable(n) and _signature(nodes, n) == sig]
    if not alike:
        raise PolicyError(f"{what} is no longer on the screen; look at the new screenshot")
    k, count = mark.order
    if len(alike) != count:
        raise PolicyError(f"{what} is ambiguous now: {len(alike)} elements alike, {count} when marked; "
                          "answer with a coordinate or a mark of the new screenshot")
    node = alike[k]
    if count > 1 and max(abs(a - b) for a, b in zip(_place(nodes, node), mark.place)) > 0.1:
        raise PolicyError(f"{what} is ambiguous now: its look-alikes moved within their window")
    if not _on_screen(node, screen):
        raise PolicyError(f"{what} is off the screen now")
    if not _shown(nodes, node):
        hit = element_at(nodes, node.centre)
        win = _window(nodes, hit) if hit is not None else None
        over = hit if win is None or win is _window(nodes, node) else win  # the window over it, else the element
        over = f" by {over.role} {over.name[:40]!r}" if over is not None else ""
        raise PolicyError(f"{what} is covered{over}; look at the new screenshot")
    if windows is not None:
        _own_window(what, mark, node, windows)
    return node


def _own_window(what: str, mark: Mark, node: Node, windows: list) -> None:
    cx, cy = node.centre
    top = next((w for w in reversed(windows) if w.x <= cx < w.x + w.w and w.y <= cy < w.y + w.h), None)
    if top is None:
        raise PolicyError(f"{what} is no longer on the screen (no window there); look at the new screenshot")
    a, b = top.title.strip().lower(), mark.window.strip().lower()
    if b and not (a == b or (a and (a in b or b in a)) or similar(top.title, mark.window) >= NAME_AGREES):
        raise PolicyError(f"{what} is covered by the window {top.title[:40]!r}; look at the new screenshot")


def record(mark: Mark, node: Node, pixel: tuple[int, int]) -> dict:
    """What a trace step keeps of a mark answer: the mark, the element, where it was and is, the point."""
    return {"n": mark.n, "role": mark.role, "name": mark.name, "app": mark.app, "window": mark.window,
            "path": list(mark.path), "box_marked": list(mark.box), "box": list(node.box), "pixel": list(pixel)}


class Marker:
    """Marks for an agent run on one display's tree (the run's StepTargets tree: one reader process)."""

    def __init__(self, tree):
        self.tree = tree

    def _windows(self) -> list | None:
        """The display's windows now (None off X: a tree without a display, in tests)."""
        from sandbox.errors import SandboxError
        from sandbox.windows import list_windows

        if not isinstance(getattr(self.tree, "display", None), str):
            return None
        try:
            return list_windows(self.tree.display)
        except SandboxError:
            return []  # no window list: nothing can be confirmed, so nothing is clicked

    def look(self, frame: Image.Image, screen: tuple[int, int]) -> Marked:
        """The tree now (the frame was just captured), its marks, and the frame with them drawn."""
        import time

        t0 = time.perf_counter()
        nodes = self.tree.nodes()
        return look(nodes, frame, screen, (time.perf_counter() - t0) * 1e3)

    def resolve(self, action, marked: Marked, screen: tuple[int, int]):
        """(the action with the marked element's centre as its coordinate, what the step keeps), read
        from the tree now; an action without a mark is returned as it is, with None."""
        n = getattr(action, "mark", None)
        if n is None:
            return action, None
        mark = marked.get(n)
        if mark is None:
            have = f"its marks are 1..{len(marked.marks)}" if marked.marks else "it has no marks"
            raise PolicyError(f"mark {n} is not on this screenshot ({have}); answer with a coordinate or one of its marks")
        node = resolve(mark, self.tree.nodes(), screen, self._windows())
        return at_node(action, node, screen), record(mark, node, node.centre)


def marked_pixels(kept: dict, frame: tuple[int, int], screen: tuple[int, int]) -> list[tuple[int, int]]:
    """The marked element's centre on the frame the model saw (its box then, in frame pixels): where
    the step's target evidence is read, which is the element although it may have moved since."""
    x, y, w, h = kept["box_marked"]
    return [(min(int((x + w // 2) * frame[0] / screen[0]), frame[0] - 1), min(int((y + h // 2) * frame[1] / screen[1]), frame[1] - 1))]


def at_node(action, node: Node, screen: tuple[int, int]):
    """The click aimed at the node's centre, as a 0..1000 coordinate of the screen (3 decimals: the
    executor's mapping lands on the centre pixel itself)."""
    cx, cy = node.centre
    coord = (round(cx / screen[0] * 1000, 3), round(cy / screen[1] * 1000, 3))
    return action.model_copy(update={"coordinate": coord, "mark": None})
