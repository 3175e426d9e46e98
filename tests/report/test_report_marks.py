"""A click the model aimed by an element mark (--marks): the report's card and overlay name the mark
and its element, and the terminal's step line too."""
from __future__ import annotations

from actions.schema import LeftClick
from agent.cli.ui import describe
from agent.report.draw import overlay
from agent.report.page import card
from agent.trace import Step

MARK = {"n": 7, "role": "push button", "name": "OK", "app": "yad", "window": "Preferences", "path": ["panel"],
        "box_marked": [400, 440, 80, 30], "box": [550, 480, 80, 30], "pixel": [590, 495]}


def step(mark=MARK) -> Step:
    return Step(step=3, raw='{"action": "left_click", "mark": 7}', action=LeftClick(action="left_click", coordinate=(461, 619)),
                screenshot="screens/0003.png", marks="screens/0003-marks.png", frame=(1280, 800), screen=(1280, 800),
                pixel=(590, 495), mark=mark)


def test_the_card_overlay_and_step_line_name_the_mark():
    label = "mark 7 (push button 'OK') -> left_click at (461, 619)"
    assert card(step(), "img.png", None)["label"] == label
    assert overlay(step())["label"] == label
    assert "mark 7 (push button 'OK') -> " in describe(step())
    assert card(step(mark=None), "img.png", None)["label"] == "left_click at (461, 619)"
