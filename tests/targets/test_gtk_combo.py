"""Clicks pressed and released like a person's (agent.desktop.x11.HOLD_S) on a real GTK combo box:
the popup opens, stays open, and a second click picks an item (zenity, a GTK 3 app)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from agent.desktop.x11 import HOLD_S, X11Desktop
from sandbox.session import Sandbox
from sandbox.windows import list_windows

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("zenity") is None, reason="zenity (GTK) is not installed; .ci/install installs it")]


def _mapped_popups(display: str) -> int:
    from Xlib import X, display as xdisplay

    d = xdisplay.Display(display)
    try:  # GTK's popup menu is an override-redirect top-level window, without a title
        return sum(1 for w in d.screen().root.query_tree().children
                   if w.get_attributes().map_state == X.IsViewable and w.get_attributes().override_redirect
                   and w.get_geometry().height > 40)
    finally:
        d.close()


def test_a_click_opens_a_gtk_combo_popup_and_a_second_click_picks_an_item(tmp_path):
    assert 0.03 <= HOLD_S <= 0.2  # held like a person, not instant, not sluggish
    with Sandbox(screen=(800, 600), workdir=tmp_path, progress=None) as sb:
        app = sb.launch(["zenity", "--forms", "--title", "Combo", "--add-combo", "Plan",
                         "--combo-values", "Basic|Pro|Team"])
        sb.wait_for_window("Combo")
        time.sleep(0.5)
        w = next(w for w in list_windows(sb.display) if w.title == "Combo")
        with X11Desktop(sb.display) as desk:
            combo = (w.x + 95, w.y + 53)  # the combo box, right of its "Plan" label
            desk.click(*combo)
            deadline = time.monotonic() + 5
            while not _mapped_popups(sb.display):
                assert time.monotonic() < deadline, "the popup did not open"
                time.sleep(0.1)
            time.sleep(0.5)
            assert _mapped_popups(sb.display), "the popup closed by itself"
            desk.click(combo[0], combo[1] + 61)  # "Team", two rows below the selected first item
            time.sleep(0.5)
            desk.click(w.x + 140, w.y + 96)  # OK
            app.proc.wait(timeout=10)
    assert app.log.read_text().strip().splitlines()[-1] == "Team"
