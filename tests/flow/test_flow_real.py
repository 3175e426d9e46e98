"""QA flows and their action cache on real apps from Debian packages: Chromium showing a local order
page, zenity's forms dialog (GTK 3), galculator (GTK 3), yad's form (GTK 3); and our Tk form (no tree). Real Xvfb, the apps' own accessibility bus,
real input; the scripted model answers each step (tests/scripts/flows/). What the app itself did
decides: the page's title says what was ordered and how many times, zenity prints the values, the
galculator's display is read.

Held here: a cached re-run makes no model call and every click lands right; a moved window is
re-found; a changed app (a relabelled button, swapped options, swapped fields, a drop-down's values
reversed) never gets a click on another widget: the step is found by what it is, or it asks the
model; and a replayed click whose effect did not show is not made a second time."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from agent.backends.script import ScriptBackend
from agent.flow.runner import run_flow
from agent.task import load_task

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
FLOWS = Path(__file__).resolve().parents[1] / "scripts" / "flows"
SCREEN = (1280, 800)
ORDERED = "Order placed - Ordered: Ada, Express, gift"


def needs(app: str):
    return pytest.mark.skipif(shutil.which(app) is None, reason=f"{app} not installed (.ci/install installs it)")


def rel(x: int, y: int) -> list[int]:
    """A screen pixel in Qwen's 0..1000 coordinates."""
    return [round(x / SCREEN[0] * 1000), round(y / SCREEN[1] * 1000)]


def variant(folder: Path, flow: str, name: str, edit=None, replies: dict | None = None) -> tuple[Path, Path]:
    """The flow's task as a variant in `folder` (same task name: the same cache), and its replies
    with a click's old coordinate replaced by a new one ({old: new})."""
    task = yaml.safe_load((folder / f"{flow}.yaml").read_text())
    if edit:
        edit(task)
    path = folder / f"{flow}-{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    text = (folder / f"{flow}.replies.yaml").read_text()
    for i, old in enumerate(replies or {}):
        assert str(list(old)) in text
        text = text.replace(str(list(old)), f"@{i}@")
    for i, new in enumerate((replies or {}).values()):
        text = text.replace(f"@{i}@", str(list(new)))
    script = folder / f"{name}.replies.yaml"
    script.write_text(text)
    return path, script


def run(task: Path, script: Path, trace: Path, cache: str = "read-only"):
    backend = ScriptBackend.from_file(str(script))
    result, folder = run_flow(load_task(task), backend, trace_dir=trace, cache=cache)
    assert result.model_calls == backend.calls
    return result


def caches(result) -> list:
    return [f.cache for f in result.flow if f.kind != "wait"]


def why(result) -> list:
    return [result.status, result.reason] + [(f.text, f.cache, f.reason) for f in result.flow]


def title(result) -> str:
    """The order page's window title, as the success check saw it (what was ordered, how often)."""
    return " ".join(c.detail for c in result.checks)


def move(task: dict, title_re: str, x: int, y: int) -> None:
    task["setup"] += [{"run": ["xdotool", "search", "--onlyvisible", "--name", title_re, "windowmove", str(x), str(y)]},
                      {"sleep": 0.8}]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Per flow: a folder with the task, its replies and the cache its cold run recorded."""
    made: dict[str, Path] = {}

    def record(flow: str) -> Path:
        if flow not in made:
            folder = tmp_path_factory.mktemp(flow)
            shutil.copytree(FLOWS, folder, dirs_exist_ok=True)
            cold = run(folder / f"{flow}.yaml", folder / f"{flow}.replies.yaml", folder / "cold", cache="read-write")
            assert cold.status == "success", why(cold)
            assert set(caches(cold)) == {"miss"} and cold.model_calls > 0
            assert (folder / f"{flow}.cache.json").exists()
            made[flow] = folder
        return made[flow]
    return record


def copy(folder: Path, tmp_path: Path) -> Path:
    """The recorded folder, the test's own copy."""
    shutil.copytree(folder, tmp_path / "t", ignore=shutil.ignore_patterns("cold"))
    return tmp_path / "t"


# ------------------------------------------------------------------------------------------ Chromium

CHROMIUM = "chromium_order_flow"


@needs("chromium")
def test_chromium_cached_rerun_makes_no_model_call_and_a_moved_window_is_refound(recorded, tmp_path):
    folder = copy(recorded(CHROMIUM), tmp_path)
    same = run(folder / f"{CHROMIUM}.yaml", folder / f"{CHROMIUM}.replies.yaml", tmp_path / "cached")
    assert same.status == "success", why(same)
    assert caches(same) == ["hit"] * 4 and same.model_calls == 0
    assert ORDERED in title(same)

    moved, script = variant(folder, CHROMIUM, "moved", lambda t: move(t, "^Order", 400, 200),
                            {(248, 239): rel(657, 351)})
    again = run(moved, script, tmp_path / "moved")
    assert again.status == "success", why(again)
    assert caches(again) == ["hit"] * 4 and again.model_calls == 0
    assert ORDERED in title(again) and "times" not in title(again)


@needs("chromium")
def test_chromium_dark_theme_and_an_inserted_row_replay_without_the_model(recorded, tmp_path):
    """Dark mode: nothing looks as recorded, each target is found by what it is and each effect
    is judged without the recorded colours. A new first row (an Email field): every widget is 48 px
    lower, the page otherwise alike; what used to be the Name field's place is the Email field."""
    folder = copy(recorded(CHROMIUM), tmp_path)

    def dark(task):
        task["setup"][0]["launch"] += ["--force-dark-mode", "--enable-features=WebContentsForceDark"]
    task, script = variant(folder, CHROMIUM, "dark", dark)
    result = run(task, script, tmp_path / "dark")
    assert result.status == "success", why(result)
    assert caches(result) == ["hit"] * 4 and result.model_calls == 0, why(result)

    row = '<div class="row"><label class="field" for="name">Name</label>'
    page = (folder / "order.html").read_text()
    assert row in page
    (folder / "order_email.html").write_text(page.replace(
        row, '<div class="row"><label class="field" for="mail">Email</label><input type="text" id="mail"></div>\n' + row))

    def insert(task):
        task["setup"][0]["launch"] = [a.replace("/order.html", "/order_email.html") for a in task["setup"][0]["launch"]]
    lower = {(248, 239): rel(317, 239), (252, 292): rel(323, 282), (80, 340): rel(102, 320), (123, 398): rel(157, 366)}
    task, script = variant(folder, CHROMIUM, "email", insert, lower)
    result = run(task, script, tmp_path / "email")
    assert result.status == "success", why(result)  # "Ada" in the Name field, once
    assert ORDERED in title(result) and "times" not in title(result)
    assert all(c in ("hit", "healed") for c in caches(result))


@needs("chromium")
def test_chromium_swapped_options_are_not_clicked_by_their_old_place(recorded, tmp_path):
    """The page's next version lists Express before Standard: Express's recorded place now holds
    Standard, and the window otherwise looks as recorded. Clicking the old place would order
    Standard shipping; the flow finds Express by what it is (or asks the model)."""
    folder = copy(recorded(CHROMIUM), tmp_path)
    page = (folder / "order.html").read_text()
    standard = '<label><input type="radio" name="ship" value="Standard" checked> Standard</label>'
    express = '<label><input type="radio" name="ship" value="Express"> Express</label>'
    assert f"{standard}\n  {express}" in page
    (folder / "order_swapped.html").write_text(page.replace(f"{standard}\n  {express}", f"{express}\n  {standard}"))

    def swap(task):
        task["setup"][0]["launch"] = [a.replace("/order.html", "/order_swapped.html") for a in task["setup"][0]["launch"]]
    task, script = variant(folder, CHROMIUM, "swapped", swap, {(252, 292): rel(218, 234)})
    result = run(task, script, tmp_path / "swapped")
    assert result.status == "success", why(result)
    assert ORDERED in title(result) and "times" not in title(result), why(result)
    assert all(c in ("hit", "healed") for c in caches(result))
    express_step = result.flow[1]
    assert express_step.cache == "hit" or "cache:" in express_step.reason, why(result)


@needs("chromium")
def test_chromium_relabelled_button_asks_the_model_once(recorded, tmp_path):
    """"Place order" now reads "Buy now": the cached click does not take the new button for the old
    one; that step alone asks the model, which finds it."""
    folder = copy(recorded(CHROMIUM), tmp_path)
    (folder / "order_buy.html").write_text((folder / "order.html").read_text().replace(">Place order<", ">Buy now<"))

    def relabel(task):
        task["setup"][0]["launch"] = [a.replace("/order.html", "/order_buy.html") for a in task["setup"][0]["launch"]]
    task, script = variant(folder, CHROMIUM, "buy", relabel)
    result = run(task, script, tmp_path / "buy")
    assert result.status == "success", why(result)
    assert caches(result) == ["hit", "hit", "hit", "healed"], why(result)
    assert [f.model_calls for f in result.flow if f.kind != "wait"] == [0, 0, 0, 1]
    assert "Place order" in result.flow[3].reason
    assert ORDERED in title(result) and "times" not in title(result)


@needs("chromium")
def test_chromium_a_replayed_click_whose_effect_did_not_show_is_not_made_twice(recorded, tmp_path):
    """The cache claims the Gift wrap click showed something this page never shows: the replayed
    click did tick the box, the effect check fails, and the model is asked. It points at the same
    checkbox: that click was right, and clicking it again would untick it."""
    folder = copy(recorded(CHROMIUM), tmp_path)
    cache = folder / f"{CHROMIUM}.cache.json"
    data = json.loads(cache.read_text())
    gift = next(s for s in data["steps"] if s["text"] == "the Gift wrap checkbox")
    from PIL import Image

    Image.new("L", (112, 48), 0).save(folder / f"{CHROMIUM}.cache" / "black.png")
    after = gift["actions"][0]["effect"]["after"]
    after["patch"]["png_file"] = after["context"]["png_file"] = f"{CHROMIUM}.cache/black.png"
    after["anchors"], after["text"]["at"] = [], "Zyzzyva"
    after.pop("a11y", None)
    cache.write_text(json.dumps(data))
    result = run(folder / f"{CHROMIUM}.yaml", folder / f"{CHROMIUM}.replies.yaml", tmp_path / "effect")
    assert result.status == "success", why(result)
    assert caches(result) == ["hit", "hit", "healed", "hit"], why(result)
    assert result.flow[2].model_calls == 1 and "not clicked again" in result.flow[2].reason
    assert ORDERED in title(result)


# ------------------------------------------------------------------------------------------ zenity

ZENITY = "zenity_shipping_flow"


def zenity_out(trace: Path) -> str:
    out = trace / "workdir" / "zenity.out"
    return out.read_text().strip() if out.exists() else ""


@needs("zenity")
def test_zenity_cached_rerun_and_swapped_fields_never_type_into_the_wrong_one(recorded, tmp_path):
    """Unchanged: no model call. The next version asks for the City before the Name: each field's
    recorded place now holds the other one, and the tree says so; the two acts ask the model
    (Ada goes into Name, Paris into City), the rest replays."""
    folder = copy(recorded(ZENITY), tmp_path)
    same = run(folder / f"{ZENITY}.yaml", folder / f"{ZENITY}.replies.yaml", tmp_path / "cached")
    assert same.status == "success", why(same)
    assert caches(same) == ["hit"] * 5 and same.model_calls == 0
    assert zenity_out(tmp_path / "cached") == "Ada|Paris|high"

    def swap(task):
        launch = task["setup"][0]["launch"]
        launch[2] = launch[2].replace("--add-entry=Name --add-entry=City", "--add-entry=City --add-entry=Name")
        task["success"] = [{"file_contains": {"path": "{workdir}/zenity.out", "text": "Paris|Ada|high"}}]  # City|Name
    task, script = variant(folder, ZENITY, "swapped", swap, {(521, 440): rel(667, 392), (521, 490): rel(667, 352)})
    result = run(task, script, tmp_path / "swapped")
    assert zenity_out(tmp_path / "swapped") == "Paris|Ada|high", why(result)
    assert result.status == "success", why(result)
    assert caches(result)[:2] == ["healed", "healed"], why(result)
    assert "by 'City'" in result.flow[0].reason and "recorded text '' by 'Name'" in result.flow[0].reason


@needs("zenity")
def test_zenity_reversed_dropdown_values_are_not_picked_by_place(recorded, tmp_path):
    """The drop-down lists "high" first now: "low" sits where "high" was recorded."""
    folder = copy(recorded(ZENITY), tmp_path)

    def reverse(task):
        launch = task["setup"][0]["launch"]
        launch[2] = launch[2].replace("low|high", "high|low")
    task, script = variant(folder, ZENITY, "reversed", reverse, {(484, 580): rel(620, 435)})
    result = run(task, script, tmp_path / "reversed")
    assert zenity_out(tmp_path / "reversed") == "Ada|Paris|high", why(result)
    assert result.status == "success", why(result)
    assert caches(result)[3] in ("hit", "healed") and result.model_calls <= 1


# ------------------------------------------------------------------------------------------ galculator

GALCULATOR = "galculator_flow"


@needs("galculator")
def test_galculator_look_alike_keys_replay_without_the_model_also_moved(recorded, tmp_path):
    folder = copy(recorded(GALCULATOR), tmp_path)
    same = run(folder / f"{GALCULATOR}.yaml", folder / f"{GALCULATOR}.replies.yaml", tmp_path / "cached")
    assert same.status == "success", why(same)  # screen_text 42
    assert caches(same) == ["hit"] * 4 and same.model_calls == 0
    for name, to in [("moved", (300, 160)), ("a pixel", (1, 1))]:  # a pixel: where each key's effect was compared
        moved, script = variant(folder, GALCULATOR, name, lambda t: move(t, "^galculator$", *to))  # in place
        again = run(moved, script, tmp_path / name)
        assert again.status == "success", why(again)
        assert caches(again) == ["hit"] * 4 and again.model_calls == 0, why(again)


# ------------------------------------------------------------------------------------------ yad, our Tk form

YAD = "yad_contact_flow"
TK_FORM = "tk_form_flow"


def workdir_text(trace: Path, name: str) -> str:
    out = trace / "workdir" / name
    return out.read_text().strip() if out.exists() else ""


@needs("yad")
def test_yad_cached_rerun_in_the_dark_theme_makes_no_model_call(recorded, tmp_path):
    """A cache recorded in the light theme replays in Adwaita:dark: every target found, no model call."""
    folder = copy(recorded(YAD), tmp_path)

    def dark(task):
        launch = task["setup"][0]["launch"]
        launch[2] = launch[2].replace("exec env ", "exec env GTK_THEME=Adwaita:dark ", 1)
    task, script = variant(folder, YAD, "dark", dark)
    result = run(task, script, tmp_path / "dark")
    assert result.status == "success", why(result)
    assert caches(result) == ["hit"] * 4 and result.model_calls == 0, why(result)
    assert workdir_text(tmp_path / "dark", "yad.out") == "Ada|ada@example.com|TRUE|Basic|"


def test_tk_form_without_a_tree_replays_from_pixels_also_moved(recorded, tmp_path):
    """Our Tk form publishes no accessibility tree: the cache re-finds its widgets by their pixels,
    unchanged and with the window moved."""
    folder = copy(recorded(TK_FORM), tmp_path)
    saved = '{"name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro", "newsletter": true}'
    moved, script = variant(folder, TK_FORM, "moved", lambda t: move(t, "^Registration$", 400, 200))
    result = run(moved, script, tmp_path / "moved")
    assert result.status == "success", why(result)
    assert caches(result) == ["hit"] * 5 and result.model_calls == 0, why(result)
    assert workdir_text(tmp_path / "moved", "form.json") == saved


GNOME_CALCULATOR = "gnome_calculator_flow"


@needs("gnome-calculator")
def test_gnome_calculator_gtk4_replays_from_pixels_unchanged_and_dark(recorded, tmp_path):
    """A GTK 4 (libadwaita) app whose tree vlagent does not read yet: its keys are found by their pixels. Launched again
    it may lay itself out a pixel lower (seen here), which must not make a cached step ask the model."""
    folder = copy(recorded(GNOME_CALCULATOR), tmp_path)

    def dark(task):
        task["setup"][0]["launch"][1:1] = ["ADW_DEBUG_COLOR_SCHEME=prefer-dark"]
    for name, edit in [("cached", None), ("dark", dark)]:
        task, script = variant(folder, GNOME_CALCULATOR, name, edit)
        result = run(task, script, tmp_path / name)
        assert result.status == "success", why(result)  # screen_text 42
        assert caches(result) == ["hit"] * 4 and result.model_calls == 0, why(result)
