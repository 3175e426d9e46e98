"""Shared fixtures, kept small: a private Xvfb display."""
from __future__ import annotations

from pathlib import Path

import pytest

# pyautogui (and Xlib) refuse to start without this file, even on an auth-less Xvfb.
Path.home().joinpath(".Xauthority").touch(exist_ok=True)


@pytest.fixture
def xvfb():
    """A fresh 1280x800 Xvfb for one test; yields its display name (":N")."""
    from sandbox.display import Xvfb

    with Xvfb((1280, 800)) as server:
        yield server.display
