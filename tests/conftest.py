"""Shared fixtures, kept small: a private Xvfb display."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules share helpers across folders (test_serve uses test_transformers_backend's form
# screenshot): every tests/<package>/ is importable, also when one folder runs alone.
sys.path[:0] = [str(p) for p in sorted(Path(__file__).parent.iterdir()) if p.is_dir() and p.name.isidentifier()]

# pyautogui (and Xlib) refuse to start without this file, even on an auth-less Xvfb.
Path.home().joinpath(".Xauthority").touch(exist_ok=True)


@pytest.fixture
def xvfb():
    """A fresh 1280x800 Xvfb for one test; yields its display name (":N")."""
    from sandbox.display import Xvfb

    with Xvfb((1280, 800)) as server:
        yield server.display


@pytest.fixture(autouse=True)
def _the_quick_tier_starts_no_display(request, monkeypatch):
    """`pytest -m "not slow"` is the quick tier: a test there that starts a display is unmarked."""
    if "not slow" not in (request.config.getoption("markexpr") or ""):
        return
    from sandbox.display import Xvfb

    def refuse(self):
        pytest.fail("this test starts a display: mark it @pytest.mark.slow (the quick tier starts none)")
    monkeypatch.setattr(Xvfb, "start", refuse)


@pytest.fixture(autouse=True)
def _secrets_are_per_test():
    """The secrets registry is process-wide: a value one test registers must not redact another's."""
    from agent import secrets

    state = secrets.snapshot()
    yield
    secrets.restore(state)
