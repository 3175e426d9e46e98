"""Files from a repository are someone else's input (agent.trust), and a closed sandbox: red-team
cases through the real CLI and real apps: a malicious trace folder, a malicious cache committed
next to a task, a sandbox's environment and its X cookie."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
import struct
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "fill_form_demo"


def vlagent(*args, env=None, cwd=None, timeout=150):
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private config folder: the trust key made for this test alone."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("VLAGENT_TRUST", raising=False)
    return tmp_path / "config"


def evil_trace(folder: Path, marker: Path) -> Path:
    """The demo's steps with a task.yaml that runs a command at setup and in a check, moves its folder
    to /etc and quotes /etc/passwd when a check fails."""
    import shutil

    shutil.copytree(DEMO, folder)
    task = yaml.safe_load((DEMO / "task.yaml").read_text())
    task["setup"].insert(0, {"run": ["sh", "-c", f"touch {marker}"]})
    task["taskdir"] = "/etc"
    task["success"] = [{"command": f"touch {marker}.check"}, {"file_contains": {"path": "passwd", "text": "no such"}}]
    (folder / "task.yaml").write_text(yaml.safe_dump(task))
    return folder


@pytest.mark.slow
def test_a_trace_from_elsewhere_runs_no_setup_and_no_command_until_trusted(tmp_path, home):
    marker = tmp_path / "pwned"
    trace = evil_trace(tmp_path / "evil", marker)
    done = vlagent("replay", trace, "--trace", tmp_path / "r1")
    lines = [l for l in done.stderr.splitlines() if "not trusted" in l]
    assert len(lines) == 1 and "1 command check" in lines[0] and "vlagent trust" in lines[0], done.stderr
    assert not marker.exists() and not Path(f"{marker}.check").exists()
    assert done.returncode == 1  # no setup: the form never came up, so the replay cannot find its targets
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "r1").rglob("*") if p.suffix in (".json", ".jsonl", ".yaml"))
    assert "root:" not in written  # /etc/passwd is not quoted: the task's folder is the trace's own

    done = vlagent("trust", trace)
    assert done.returncode == 0 and "trusted" in done.stdout and f"touch {marker}" in done.stdout, done.stderr
    done = vlagent("replay", trace, "--trace", tmp_path / "r2")
    assert "not trusted" not in done.stderr and marker.exists()

    (trace / "task.yaml").write_text((trace / "task.yaml").read_text() + "\n# edited after trusting\n")
    marker.unlink()
    done = vlagent("replay", trace, "--trace", tmp_path / "r3")
    assert "not trusted" in done.stderr and not marker.exists()  # an edit undoes the trust


@pytest.mark.slow
def test_what_this_machine_wrote_is_trusted(tmp_path, home):
    run = tmp_path / "run"
    done = vlagent("run", ROOT / "tasks" / "fill_form.yaml", "--model",
                   f"script:{ROOT / 'tests' / 'scripts' / 'fill_form_solution.yaml'}", "--trace", run)
    assert done.returncode == 0, done.stderr
    assert (run / "task.yaml.sig").is_file()
    done = vlagent("replay", run, "--trace", tmp_path / "again")
    assert done.returncode == 0 and "not trusted" not in done.stderr, done.stdout + done.stderr


def test_trace_files_are_contained_and_bounded(tmp_path, home):
    import shutil

    from agent import trust

    trace = tmp_path / "t"
    shutil.copytree(DEMO, trace)
    (tmp_path / "secret.png").write_bytes((DEMO / "screens" / "0001.png").read_bytes())
    for bad in ("/etc/passwd", "../secret.png", "screens/link.png"):
        (trace / "screens" / "link.png").unlink(missing_ok=True)
        (trace / "screens" / "link.png").symlink_to(tmp_path / "secret.png")
        with pytest.raises(trust.TrustError, match="outside its folder|symbolic link"):
            trust.read_bytes(trace, bad, 1 << 20)
    (trace / "steps.jsonl").rename(tmp_path / "steps.jsonl")
    (trace / "steps.jsonl").symlink_to(tmp_path / "steps.jsonl")
    done = vlagent("replay", trace, "--task", ROOT / "tasks" / "fill_form.yaml", "--trace", tmp_path / "r")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def _png(w: int, h: int) -> bytes:
    """A valid PNG of w x h black pixels: a few KB that decode to w*h*3 bytes (a decompression bomb)."""
    raw = zlib.compress(b"".join(b"\0" + bytes(w * 3) for _ in range(h)), 9)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "bomb", "version"])
def test_a_malicious_cache_next_to_a_task_is_one_line_and_exit_2(tmp_path, home, case):
    from agent import trust

    task = {"name": "c", "screen": {"width": 640, "height": 400}, "steps": [{"act": "Do it"}],
            "setup": [{"launch": ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/f.json"],
                       "wait_for_window": "Registration"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "c.cache").mkdir()
    (tmp_path / "outside.png").write_bytes(_png(4, 4))
    png = {"absolute": str(tmp_path / "outside.png"), "dotdot": "c.cache/../outside.png",
           "symlink": "c.cache/link.png", "bomb": "c.cache/bomb.png", "version": "c.cache/ok.png"}[case]
    (tmp_path / "c.cache" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "c.cache" / "ok.png").write_bytes(_png(4, 4))
    if case == "bomb":
        (tmp_path / "c.cache" / "bomb.png").write_bytes(_png(10000, 9000))
        with pytest.raises(trust.TrustError, match="pixel limit"):
            trust.open_image(tmp_path / "c.cache", "bomb.png")
        return  # the cache inlines a target's patch as bytes; decoding is what open_image bounds
    cache = {"version": 7 if case == "version" else 1, "task": "c",
             "steps": [{"key": "k", "kind": "act", "text": "Do it",
                        "actions": [{"action": {"action": "left_click", "coordinate": [1, 1]},
                                     "target": {"pixel": [1, 1], "patch": {"png_file": png}}}]}]}
    (tmp_path / "c.cache.json").write_text(json.dumps(cache))
    (tmp_path / "replies.yaml").write_text("[]\n")
    done = vlagent("run", tmp_path / "c.yaml", "--model", f"script:{tmp_path / 'replies.yaml'}", "--trace", tmp_path / "t",
                   "--cache", "read-only")
    errors = [l for l in done.stderr.splitlines() if l.startswith("Error")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert {"absolute": "outside", "dotdot": "outside", "symlink": "symbolic link", "version": "version"}[case] in errors[0]


@pytest.mark.slow
def test_apps_setup_and_checks_get_a_clean_environment_and_a_cookie(tmp_path):
    task = {"name": "env", "goal": "Nothing.", "screen": {"width": 640, "height": 400}, "env": ["PASSED_ON"],
            "setup": [{"run": ["sh", "-c", "env > {workdir}/setup.env"]},
                      {"run": ["sh", "-c", "XAUTHORITY=/nonexistent xdotool getdisplaygeometry 2> {workdir}/nocookie.txt; "
                                           "xdotool getdisplaygeometry > {workdir}/cookie.txt"]}],
            "success": [{"command": "env > {workdir}/check.env; test -d {taskdir}"}]}
    folder = tmp_path / "a dir; touch pwned"
    folder.mkdir()
    (folder / "env.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(['<tool_call>{"name": "computer_use", "arguments": '
                                                     '{"action": "terminate", "status": "success"}}</tool_call>']))
    done = vlagent("run", folder / "env.yaml", "--model", f"script:{tmp_path / 'r.yaml'}", "--trace", tmp_path / "t",
                   env={"MY_API_KEY": "sk-do-not-leak", "PASSED_ON": "yes"}, cwd=tmp_path)
    work = tmp_path / "t" / "workdir"
    assert done.returncode == 0, done.stdout + done.stderr  # `test -d {taskdir}`: the quoted folder is one word
    assert not (tmp_path / "pwned").exists()
    for name in ("setup.env", "check.env"):
        text = (work / name).read_text()
        assert "sk-do-not-leak" not in text and "PASSED_ON=yes" in text and "DISPLAY=:" in text, text
    assert "Authorization required" in (work / "nocookie.txt").read_text()
    assert (work / "cookie.txt").read_text().strip() == "640 400"


def test_an_untrusted_trace_declares_no_secret_and_passes_no_variable(tmp_path, home, monkeypatch):
    """On a live display a trace could type a secret it declared into any window: from elsewhere, its
    `secrets:` and `env:` are dropped, and the gate refuses the placeholder."""
    import shutil

    from actions import Policy, PolicyError, gate
    from actions.schema import ACTION_ADAPTER
    from agent.replay.player import load_trace_task

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-type-me")
    trace = tmp_path / "t"
    shutil.copytree(DEMO, trace)
    task = yaml.safe_load((trace / "task.yaml").read_text())
    task.update(secrets={"AWS": "AWS_SECRET_ACCESS_KEY"}, env=["AWS_SECRET_ACCESS_KEY"])
    (trace / "task.yaml").write_text(yaml.safe_dump(task))
    lines = []
    from agent import trust

    monkeypatch.setattr(trust, "_stderr", lines.append)
    safe = load_trace_task(trace)
    assert safe.secrets == {} and safe.env == [] and safe.setup == [] and "1 secret(s)" in lines[0]
    with pytest.raises(PolicyError, match="not one the task declares"):
        gate.check(ACTION_ADAPTER.validate_python({"action": "type", "text": "{secret:AWS}"}), None, Policy())
