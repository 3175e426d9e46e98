"""Which elements a frame hides (agent.desktop.mask), without a display: the task's `mask:` list or
password fields for a remote model, matched on accessibility nodes; a tree that cannot be read stops."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from actions.policy import MaskPlace
from agent.desktop.mask import PASSWORD_FIELDS, MaskError, Masker, boxes, places
from agent.task import Task
from sandbox.atspi import Node


def node(i, role, name="", box=(0, 0, 10, 10), states=(), parent=1, depth=3):
    return Node(i=i, parent=parent, role=role, name=name, states=tuple(states), box=box, app="app", depth=depth)


NODES = [
    node(0, "application", "app", parent=-1, depth=1),
    node(1, "frame", "Checkout", box=(0, 0, 400, 300), parent=0, depth=2),
    node(2, "label", "Card number", box=(10, 20, 90, 20)),
    node(3, "text", "", box=(110, 20, 200, 20), states=("editable", "focusable")),
    node(4, "label", "Password", box=(10, 60, 90, 20)),
    node(5, "password text", "", box=(110, 60, 200, 20), states=("editable", "focusable")),
    node(6, "push button", "Pay", box=(110, 100, 80, 30), states=("focusable",)),
]


def test_a_remote_model_hides_password_fields_and_a_task_list_replaces_that():
    remote, local = SimpleNamespace(remote=True), SimpleNamespace(remote=False)
    assert places(Task(name="t", goal="g"), remote) == PASSWORD_FIELDS
    assert places(Task(name="t", goal="g"), local) == ()
    listed = Task(name="t", goal="g", mask=[{"field": "Card number"}])
    assert [p.field for p in places(listed, remote)] == ["Card number"]  # the list is the whole rule
    assert places(Task(name="t", goal="g", mask=[]), remote) == ()  # nothing to hide
    with pytest.raises(ValueError, match="names a field, a role or both"):
        MaskPlace()


def test_a_field_is_matched_by_its_label_or_role_never_the_label_itself():
    assert boxes(NODES, PASSWORD_FIELDS) == [(110, 60, 200, 20)]
    assert boxes(NODES, (MaskPlace(field="card number"),)) == [(110, 20, 200, 20)]  # the input, not the label
    assert boxes(NODES, (MaskPlace(field="Pay"),)) == [(110, 100, 80, 30)]  # a button by its name
    assert boxes(NODES, (MaskPlace(role="label", field="Password"),)) == [(10, 60, 90, 20)]  # asked for by role


class FakeTree:
    display = ":99"

    def __init__(self, nodes):
        self.answer = nodes

    def read(self):
        return self.answer


def test_the_boxes_are_opaque_and_a_tree_that_cannot_be_read_stops():
    image = Image.new("RGB", (400, 300), "white")
    masked = Masker(FakeTree(NODES), PASSWORD_FIELDS, "sent to a server")(image)
    assert masked.crop((110, 60, 310, 80)).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert masked.getpixel((120, 25)) == (255, 255, 255)  # the card field is not asked for
    assert image.getpixel((120, 65)) == (255, 255, 255)  # the original frame is left as it was
    with pytest.raises(MaskError, match="cannot read the accessibility tree.*no frame sent"):
        Masker(FakeTree(None), PASSWORD_FIELDS, "sent to a server")(image)
