"""Success checks on real Debian apps under Xvfb, in any theme: galculator (GTK 3) and a Chromium page
under a dark theme and a larger font, read by the accessibility tree and by OCR of real screenshots;
the a11y check passing and failing on real widgets; OCR of coloured and light-on-dark text."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.ocr import read_text
from agent.run.checks import evaluate
from agent.task import Task
from sandbox.session import Sandbox
from sandbox.windows import list_windows

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "benchmarks" / "replay_real" / "order.html"
DARK_GTK, FONT_GTK = ["GTK_THEME=Adwaita:dark"], ["GDK_DPI_SCALE=1.5"]
DARK_CHROMIUM = ["--force-dark-mode", "--enable-features=WebContentsForceDark"]
FONT_CHROMIUM = ["--force-device-scale-factor=1.5"]


class Screen:
    """What checks use of a desktop: its display and a capture of it."""

    def __init__(self, display: str):
        self.display = display

    def capture(self) -> Image.Image:
        from agent.desktop.x11 import X11Desktop

        with X11Desktop(self.display) as d:
            d.wait_stable(2.0)
            return d.capture()


def check(sb: Sandbox, tmp_path: Path, checks: list) -> list:
    task = Task.model_validate({"name": "t", "goal": "g", "success": checks})
    task.base_dir = tmp_path
    return evaluate(task, tmp_path, Screen(sb.display))


def ocr_of_windows(sb: Sandbox) -> str:
    image = Screen(sb.display).capture()
    return " ".join(read_text(image, list_windows(sb.display)).split())


def xdo(sb: Sandbox, *args: str) -> None:
    subprocess.run(["xdotool", *args], env=sb.env, check=True, timeout=20)


def galculator_42(sb: Sandbox, env: list[str]) -> None:
    sb.launch(["env", "NO_AT_BRIDGE=0", f"XDG_CONFIG_HOME={sb.workdir}/cfg", *env, "galculator"])
    sb.wait_for_window("^galculator$", 60)
    time.sleep(1.5)
    xdo(sb, "search", "--onlyvisible", "--name", "^galculator$", "windowfocus")
    xdo(sb, "type", "--delay", "80", "7*6=")
    time.sleep(0.5)


def chromium_order(sb: Sandbox, flags: list[str]) -> None:
    """The order page with "Ada" typed and the order placed by keyboard: it shows "Ordered: Ada, Standard"."""
    sb.launch(["chromium", "--no-sandbox", f"--user-data-dir={sb.workdir}/chrome", f"--app=file://{PAGE}",
               "--force-renderer-accessibility", "--window-size=760,560", "--window-position=60,40",
               "--no-first-run", "--disable-gpu", "--disable-features=Translate", *flags])
    sb.wait_for_window("^Order", 60)
    time.sleep(2.0)
    xdo(sb, "search", "--onlyvisible", "--name", "^Order", "windowfocus")
    xdo(sb, "key", "Tab")
    xdo(sb, "type", "Ada")
    for _ in range(3):
        xdo(sb, "key", "Tab")
    xdo(sb, "key", "Return")
    time.sleep(1.0)


needs_gtk = pytest.mark.skipif(not shutil.which("galculator"), reason="galculator not installed (.ci/install)")
needs_chromium = pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (.ci/install)")


@pytest.mark.slow
@needs_gtk
@pytest.mark.parametrize("env", [DARK_GTK, FONT_GTK], ids=["dark", "font"])
def test_galculator_result_is_read_in_a_dark_theme_and_a_large_font(tmp_path, env):
    with Sandbox(workdir=tmp_path / "work") as sb:
        galculator_42(sb, env)
        # OCR alone (no tree): the white display inside the dark window, the 1.5x digits
        assert " 42 " in f" {ocr_of_windows(sb)} "
        ok, wrong = check(sb, tmp_path, [{"screen_text": "42"}, {"screen_text": "43"}])
        assert ok.passed and ok.detail == "found in the accessibility tree: text ''", ok
        assert not wrong.passed and "OCR read:" in wrong.detail and "42" in wrong.detail


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("flags", [DARK_CHROMIUM, FONT_CHROMIUM], ids=["dark", "font"])
def test_chromium_page_text_is_read_in_forced_dark_mode_and_a_large_font(tmp_path, flags):
    with Sandbox(workdir=tmp_path / "work") as sb:
        chromium_order(sb, flags)
        assert "Ordered: Ada, Standard" in ocr_of_windows(sb)
        ok, wrong = check(sb, tmp_path, [{"screen_text": "ordered: ada, standard"}, {"screen_text": "Ordered: Bob"}])
        assert ok.passed and ok.detail == "found in the accessibility tree: static 'Ordered: Ada, Standard'"
        assert not wrong.passed and "ordered: ada, standard" in wrong.detail  # what OCR read instead


@pytest.mark.slow
@needs_chromium
def test_a11y_checks_pass_and_fail_on_a_real_page(tmp_path):
    with Sandbox(workdir=tmp_path / "work") as sb:
        chromium_order(sb, DARK_CHROMIUM)
        results = check(sb, tmp_path, [
            {"a11y": {"role": "static", "name": "ordered: ada,  standard"}},
            {"a11y": {"role": "radio button", "name": "Standard", "states": {"checked": True}}},
            {"a11y": {"role": "entry", "name": "Name", "text": "Ada"}},
            {"a11y": {"role": "check box", "name": "Gift wrap", "states": {"checked": True}}},  # not ticked
            {"a11y": {"role": "entry", "name": "Name", "text": "Bob"}},
            {"a11y": {"role": "push button", "name": "Cancel"}},
            {"window_title": "^Order placed - Ordered: Ada, Standard$"},
        ])
        assert [r.passed for r in results] == [True, True, True, False, False, False, True], results
        assert results[0].detail.startswith("static 'Ordered: Ada, Standard' at")
        assert results[3].check == "a11y: role='check box' name='Gift wrap' states={'checked': True}"
        assert results[3].detail == "no element with that states; text matches: check box 'Gift wrap'"
        # (a field's content is not quoted: result.json is part of the trace; allow.store_field_text quotes it)
        assert results[4].detail == "no element with that text; name matches: entry 'Name'"
        assert results[5].detail.startswith("no element with that name; role matches: push button 'Place order'")


@pytest.mark.slow
def test_an_a11y_check_on_an_app_without_a_tree_says_so(tmp_path):
    with Sandbox(workdir=tmp_path / "work") as sb:
        sb.run_setup([])
        sb.launch(["python3", "-m", "sandbox.apps.form", "--out", str(tmp_path / "f.json")])
        sb.wait_for_window("Registration", 30)
        [r] = check(sb, tmp_path, [{"a11y": {"role": "label", "name": "Saved"}}])
        assert not r.passed and r.detail.startswith(f"no accessibility tree on display {sb.display}")


def test_an_a11y_check_needs_something_to_look_for_and_known_states():
    with pytest.raises(ValueError, match="needs role, name or text"):
        Task.model_validate({"name": "t", "goal": "g", "success": [{"a11y": {"states": {"checked": True}}}]})
    with pytest.raises(ValueError, match="unknown state 'ticked'"):
        Task.model_validate({"name": "t", "goal": "g", "success": [{"a11y": {"name": "x", "states": {"ticked": True}}}]})


# -- OCR of colours and polarities (drawn images: no display) ------------------------------------

def _font(px: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", px)
    except OSError:
        return ImageFont.load_default(size=px)


@pytest.mark.slow
@pytest.mark.parametrize("ground,ink", [
    ("#1e1e1e", "#f0f0f0"),  # light on dark
    ("#2050c0", "white"),  # white on a blue button
    ("white", "#d02020"),  # red on white
    ("#303030", "#40d040"),  # green on dark grey
    ("white", "#e08000"),  # orange on white: little contrast left in grey levels
])
def test_coloured_and_light_on_dark_text_is_read(ground, ink):
    img = Image.new("RGB", (420, 140), "#ececec")  # a light window ...
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 20, 400, 120), fill=ground)  # ... holding a panel of another colour
    draw.text((40, 50), "Saved 5535", fill=ink, font=_font(22))
    draw.text((300, 125), "v2", fill="black", font=_font(11))
    assert "Saved 5535" in read_text(img)


def test_a_white_display_inside_a_dark_window_is_read_with_the_window():
    """galculator under Adwaita:dark, drawn: tesseract on the grey window (the code before) read the
    menu and the keys but never the display's digits; the ink maps read both."""
    try:
        bold = ImageFont.truetype("DejaVuSans-Bold.ttf", 30)
    except OSError:
        bold = _font(30)
    img = Image.new("RGB", (330, 340), "#353535")
    draw = ImageDraw.Draw(img)
    for x, word in ((8, "File"), (48, "Edit"), (90, "View"), (140, "Calculator")):
        draw.text((x, 5), word, fill="#eeeeee", font=_font(13))
    draw.rectangle((6, 31, 324, 84), fill="white", outline="#1b1b1b")
    draw.text((230, 40), "5535", fill="black", font=bold)
    for i, key in enumerate("789456123"):
        x, y = 6 + (i % 3) * 65, 183 + (i // 3) * 40
        draw.rounded_rectangle((x, y, x + 58, y + 33), 3, fill="#404040", outline="#1b1b1b")
        draw.text((x + 25, y + 9), key, fill="#eeeeee", font=_font(13))
    assert read_text(img).splitlines()[:2] == ["File Edit View Calculator", "5535"]
