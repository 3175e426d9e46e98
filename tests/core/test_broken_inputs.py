"""Broken inputs, as a careless user or an attacker gives them: every one is exit 2 and one line
naming the fault, never a traceback, and nothing starts (these run the real `vlagent` CLI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts displays, apps or models

ROOT = Path(__file__).resolve().parents[2]
REPLY = '<tool_call>{"name": "computer_use", "arguments": {"action": "wait", "time": 1}}</tool_call>'
GOOD = "name: t\ngoal: g\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def vlagent(*args, cwd=ROOT, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]
    return errors[0]


TASK_FILES = {
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    "latin1": ("name: t\ngoal: caf\xe9 cr\xe8me\n".encode("latin-1"), "not UTF-8"),
    "utf16": ("name: t\ngoal: g\n".encode("utf-16"), "binary file"),  # NUL bytes
    "huge_int": (f"name: t\ngoal: g\nmax_steps: {'9' * 5000}\n".encode(), "number of 5000 characters"),
    "huge_float": (f"name: t\ngoal: g\ntimeout_s: 1{'0' * 5000}.5\n".encode(), "timeout_s"),
    "nan_timeout": (b"name: t\ngoal: g\ntimeout_s: .nan\n", "timeout_s"),
    "inf_timeout": (b"name: t\ngoal: g\ntimeout_s: .inf\n", "timeout_s"),
    "deep_brackets": (b"name: t\ngoal: " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply"),
    "deep_maps": (b"name: t\ngoal: g\nsuccess: " + b"{a: " * 5_000 + b"1" + b"}" * 5_000 + b"\n", "nested too deeply"),
    "duplicate_key": (b"name: t\ngoal: g\ngoal: rm -rf /\n", "appears twice"),
    "duplicate_nested": (b"name: t\ngoal: g\nallow: {max_text_len: 5, max_text_len: 100000}\n", "appears twice"),
    "billion_laughs": (("name: t\ngoal: g\nsuccess:\n  - file_json:\n      path: x.json\n      equals:\n"
                        + "".join("        " + line + "\n" for line in LAUGHS.splitlines())).encode(), "expands to more"),
    "alias_cycle": (b"name: t\ngoal: g\nsuccess: &s [*s]\n", "expands to more|invalid task|not valid YAML"),
    "not_a_mapping": (b"- just\n- a list\n", "mapping"),
    "empty": (b"", "mapping"),
    "bad_yaml": (b"name: t\ngoal: [unclosed\n", "not valid YAML"),
    "backreference": (b"name: t\ngoal: g\nsuccess: [{window_title: '(a)\\1'}]\n", "RE2"),
    "bad_deny": (b"name: t\ngoal: g\nallow: {deny_text: ['(?<=x)y']}\n", "RE2"),
    "bad_allow_text": (b"name: t\ngoal: g\nallow: {text: [{pattern: '(unclosed'}]}\n", "bad regex"),
    "unknown_field": (b"name: t\ngoal: g\nalow: {}\n", "alow"),
    "too_big": (b"name: t\ngoal: g\n#" + b"x" * (1 << 20) + b"\n", "MiB"),
}


@pytest.mark.parametrize("case", sorted(TASK_FILES))
def test_a_broken_task_file_is_one_line_and_exit_2(tmp_path, case):
    data, needle = TASK_FILES[case]
    task = tmp_path / f"{case}.yaml"
    task.write_bytes(data)
    line = assert_one_line_exit_2(vlagent("check-action", "--task", task, REPLY))
    assert any(n.lower() in line.lower() for n in needle.split("|")), line
    assert len(line) < 800


def test_vlagent_run_stops_before_starting_anything_on_a_broken_task(tmp_path):
    task = tmp_path / "dup.yaml"
    task.write_bytes(TASK_FILES["duplicate_key"][0])
    proc = vlagent("run", task, "--model", "script:tests/scripts/fill_form_solution.yaml", "--trace", tmp_path / "t")
    assert_one_line_exit_2(proc, "appears twice")
    assert not (tmp_path / "t").exists() and "setup:" not in proc.stderr


def test_a_bom_is_fine(tmp_path):
    task = tmp_path / "bom.yaml"
    task.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    proc = vlagent("check-action", "--task", task, REPLY)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "abc", "1e999"])
def test_timeout_must_be_a_positive_finite_number(tmp_path, value):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    assert_one_line_exit_2(vlagent("run", task, "--timeout", value, "--model", "script:x"), "--timeout")


@pytest.mark.parametrize("args, needle", [
    (["--max-steps", "0"], "--max-steps"), (["--max-steps", "9" * 5000], "--max-steps"),
    (["--history-images", "nan"], "--history-images"), (["--max-pixels", "nan"], "--max-pixels"),
    (["--model", "script:/nonexistent/replies.yaml"], "replies"),
])
def test_bad_run_arguments(tmp_path, args, needle):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    assert_one_line_exit_2(vlagent("run", task, "--trace", tmp_path / "tr", *args), needle)


def test_task_path_that_is_missing_or_a_folder(tmp_path):
    assert_one_line_exit_2(vlagent("check-action", "--task", tmp_path / "nope.yaml", REPLY))
    assert_one_line_exit_2(vlagent("run", tmp_path / "nope.yaml"))
    assert_one_line_exit_2(vlagent("run", tmp_path))


def test_a_trace_folder_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    (tmp_path / "file").write_text("x")
    assert_one_line_exit_2(vlagent("run", task, "--model", "script:x", "--trace", tmp_path / "file" / "t"),
                           "cannot write the trace folder")
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", ro], check=True)
    try:
        proc = vlagent("run", task, "--model", "script:tests/scripts/fill_form_solution.yaml", "--trace", ro / "t")
        assert_one_line_exit_2(proc, "read-only file system")
    finally:
        subprocess.run(["umount", ro], check=True)


@pytest.mark.parametrize("screen", ["1e5000x3", "nanxnan", "99999999999999999999x1", "x", "-5x5"])
def test_check_action_screen_argument(screen):
    assert_one_line_exit_2(vlagent("check-action", "--screen", screen, REPLY), "--screen")


def test_a_reply_with_a_5000_digit_number_is_rejected_not_a_traceback():
    reply = '{"name": "computer_use", "arguments": {"action": "scroll", "pixels": %s}}' % ("9" * 5000)
    proc = vlagent("check-action", reply)
    assert proc.returncode == 1 and proc.stderr.startswith("rejected: ") and "Traceback" not in proc.stderr
