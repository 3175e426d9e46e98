"""Element marks (agent/targets/marks.py) on hand-made accessibility trees: which elements get a
number, how the prompt lists them, that the tags stay legible on light and dark frames without
covering the element's own label, and that a mark is found again by what it is at action time
(moved: its new centre; gone, ambiguous or covered: refused with the reason)."""
from __future__ import annotations

import pytest
from PIL import Image

from actions.policy import PolicyError
from actions.schema import LeftClick
from agent.run.executor import screen_point
from agent.targets import marks as mk
from sandbox.atspi import Node

SCREEN = (1280, 800)


def tree(dx: int = 0, dy: int = 0, rows: int = 2, dialog: bool = False, ok: bool = True) -> list[Node]:
    """An app with one window at (100+dx, 100+dy): a Name field (labelled, unnamed), OK and Cancel,
    a list of `rows` rows each with a Delete button; `dialog`: a dialog over the OK button."""
    nodes: list[Node] = []

    def add(parent, role, name, box, states=("sensitive", "showing"), depth=None):
        n = Node(len(nodes), parent, role, name, tuple(states), box, "app", depth if depth is not None else
                 (nodes[parent].depth + 1 if parent >= 0 else 1))
        nodes.append(n)
        return n.i

    app = add(-1, "application", "app", (0, 0, 0, 0))
    win = add(app, "frame", "Orders", (100 + dx, 100 + dy, 500, 400))
    pane = add(win, "panel", "", (100 + dx, 100 + dy, 500, 400))
    add(pane, "label", "Name", (110 + dx, 120 + dy, 60, 20))
    add(pane, "text", "", (180 + dx, 118 + dy, 200, 24), states=("editable", "sensitive", "focusable"))
    if ok:
        add(pane, "push button", "OK", (400 + dx, 440 + dy, 80, 30))
    add(pane, "push button", "Cancel", (490 + dx, 440 + dy, 80, 30))
    add(pane, "label", "a heading, not clickable", (110 + dx, 160 + dy, 200, 20))
    table = add(pane, "table", "", (110 + dx, 200 + dy, 460, 200))
    for r in range(rows):
        row = add(table, "table row", "", (110 + dx, 200 + dy + 40 * r, 460, 40))
        add(row, "push button", "Delete", (480 + dx, 205 + dy + 40 * r, 70, 30))
    if dialog:
        d = add(app, "dialog", "Sure?", (380 + dx, 420 + dy, 220, 80))
        body = add(d, "panel", "", (380 + dx, 420 + dy, 220, 80))
        add(body, "push button", "Yes", (390 + dx, 460 + dy, 60, 30))
    return nodes


def test_interactive_elements_are_numbered_in_reading_order_and_listed():
    marks = mk.pick(tree(), SCREEN)
    assert [m.says() for m in marks] == ["text labelled 'Name'", "push button 'Delete'", "push button 'Delete'",
                                         "push button 'OK'", "push button 'Cancel'"]
    assert [m.n for m in marks] == [1, 2, 3, 4, 5]
    assert [m.order for m in marks[1:3]] == [(0, 2), (1, 2)]  # look-alikes know which one they are
    note = mk.listing(marks)
    assert "[4] push button 'OK'" in note and "[1] text labelled 'Name'" in note and '"mark": 1' in note
    assert "accessibility tree" in mk.listing(())  # no tree: the model is told to use coordinates


def test_an_element_under_another_window_gets_no_mark():
    says = [m.says() for m in mk.pick(tree(dialog=True), SCREEN)]
    assert "push button 'OK'" not in says and "push button 'Yes'" in says


def _colours(image: Image.Image) -> set:
    return {c for _, c in image.getcolors(1 << 24)}


def _contrast(a, b) -> float:
    def lum(c):
        c = [v / 255 for v in c]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("background", [(250, 250, 250), (30, 30, 30)], ids=["light", "dark"])
def test_tags_are_legible_on_light_and_dark_themes_and_leave_labels_alone(background):
    frame = Image.new("RGB", SCREEN, background)
    marks = mk.pick(tree(), SCREEN)
    shown = mk.draw(frame, marks, SCREEN)
    for fill in mk.FILLS:
        assert _contrast(fill, mk.TEXT_RGB) >= 4.5  # the digits on their tag
        # the tag against the theme: its fill, or else its white rim
        assert max(_contrast(fill, background), _contrast(mk.RIM_RGB, background)) >= 3
    colours = _colours(shown)
    assert set(mk.FILLS) <= colours and mk.TEXT_RGB in colours
    for m in marks:  # the element's inside (its label) is not painted over: tags sit outside it
        x, y, w, h = m.box
        inside = (x + mk.OUTLINE_PX, y + mk.OUTLINE_PX, x + w - mk.OUTLINE_PX - 1, y + h - mk.OUTLINE_PX - 1)
        assert _colours(shown.crop(inside)) == {background}, m.says()
    assert frame.getpixel((0, 0)) == background  # the frame itself (the trace's screenshot) is untouched


def test_a_mark_is_found_again_where_its_element_is_now():
    marks = mk.pick(tree(), SCREEN)
    ok = next(m for m in marks if m.name == "OK")
    moved = tree(dx=150, dy=40)
    node = mk.resolve(ok, moved, SCREEN)
    assert node.box == (550, 480, 80, 30)
    action = mk.at_node(LeftClick(action="left_click", mark=ok.n), node, SCREEN)
    assert action.mark is None and screen_point(action.coordinate, SCREEN, SCREEN) == node.centre
    # a HiDPI frame half the screen's size: the executor still lands inside the element
    x, y = screen_point(action.coordinate, (640, 400), SCREEN)
    assert 550 <= x < 630 and 480 <= y < 510
    second = next(m for m in marks if m.name == "Delete" and m.order[0] == 1)
    assert mk.resolve(second, moved, SCREEN).box == (630, 285, 70, 30)  # the second look-alike, moved


def test_a_vanished_ambiguous_or_covered_mark_is_refused_with_the_reason():
    marks = mk.pick(tree(), SCREEN)
    ok = next(m for m in marks if m.name == "OK")
    delete = next(m for m in marks if m.name == "Delete")
    with pytest.raises(PolicyError, match=r"mark 4 \(push button 'OK'\) is no longer on the screen"):
        mk.resolve(ok, tree(ok=False), SCREEN)
    with pytest.raises(PolicyError, match="ambiguous now: 3 elements alike, 2 when marked"):
        mk.resolve(delete, tree(rows=3), SCREEN)
    with pytest.raises(PolicyError, match="covered by dialog 'Sure\\?'"):
        mk.resolve(ok, tree(dialog=True), SCREEN)
    with pytest.raises(PolicyError, match="off the screen"):
        mk.resolve(ok, tree(dx=900), SCREEN)


class _Tree:
    """The one method Marker uses of sandbox.atspi.Tree: nodes() reads the tree now."""

    def __init__(self, *reads):
        self.reads = list(reads)

    def nodes(self):
        return self.reads.pop(0)


def test_the_marker_reads_the_tree_again_at_action_time():
    frame = Image.new("RGB", SCREEN, (250, 250, 250))
    marker = mk.Marker(_Tree(tree(), tree(dx=150, dy=40)))
    marked = marker.look(frame, SCREEN)
    assert marked.image is not frame and marked.note.count("\n[") >= 4
    action, kept = marker.resolve(LeftClick(action="left_click", mark=4), marked, SCREEN)
    assert kept["name"] == "OK" and kept["box_marked"] == [400, 440, 80, 30] and kept["box"] == [550, 480, 80, 30]
    assert tuple(kept["pixel"]) == (590, 495) and screen_point(action.coordinate, SCREEN, SCREEN) == (590, 495)
    with pytest.raises(PolicyError, match=r"mark 9 is not on this screenshot \(its marks are 1..5\)"):
        marker.resolve(LeftClick(action="left_click", mark=9), marked, SCREEN)
    unmarked = LeftClick(action="left_click", coordinate=(5, 5))
    assert marker.resolve(unmarked, marked, SCREEN) == (unmarked, None)


def test_the_x_server_has_the_last_word_on_what_is_at_the_point():
    """The tree can lag (an unmapped window's widgets may still say they are showing): the topmost
    viewable window at the element's centre must be its own."""
    from sandbox.windows import Window

    ok = next(m for m in mk.pick(tree(), SCREEN) if m.name == "OK")
    own = Window(1, "Orders", 100, 100, 500, 400)
    assert mk.resolve(ok, tree(), SCREEN, [own]).name == "OK"
    with pytest.raises(PolicyError, match="no longer on the screen \\(no window there\\)"):
        mk.resolve(ok, tree(), SCREEN, [])
    with pytest.raises(PolicyError, match="covered by the window 'Terminal'"):
        mk.resolve(ok, tree(), SCREEN, [own, Window(2, "Terminal", 300, 400, 400, 300)])
