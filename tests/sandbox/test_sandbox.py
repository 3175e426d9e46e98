"""The sandbox on a real Xvfb with real apps: start, setup, faults, teardown leaving nothing."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import SandboxError
from agent.task import SetupStep
from sandbox.display import Xvfb
from sandbox.session import Sandbox
from sandbox.windows import display_size, find_windows, list_windows

pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of stalling CI
GONE_TIMEOUT_S = 10.0  # bound on waiting for killed processes to vanish (not a speed check)
FORM = [sys.executable, "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"]
CRASH = [sys.executable, "-m", "sandbox.apps.crash"]


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def launch_form(sb: Sandbox) -> None:
    sb.run_setup([SetupStep(launch=FORM, wait_for_window="Registration")])


@pytest.mark.slow
def test_xvfb_starts_on_a_free_display_and_stops(tmp_path):
    with Xvfb((1024, 768)) as a, Xvfb((640, 480)) as b:
        assert a.display != b.display
        assert display_size(a.display) == (1024, 768)
        assert display_size(b.display) == (640, 480)
        pids = [a.pid, b.pid]
    assert wait_gone(pids) == []


@pytest.mark.slow
def test_sandbox_teardown_leaves_no_process(tmp_path):
    with Sandbox(screen=(1280, 800), workdir=tmp_path, cwd=tmp_path) as sb:
        launch_form(sb)
        pids = [sb.xvfb.pid, sb.apps[0].proc.pid]
        assert all(alive(p) for p in pids)
        windows = find_windows(sb.display, "^Registration$")
        assert len(windows) == 1 and windows[0].w > 0
    assert wait_gone(pids) == []  # (the display number itself may be reused by now: not checked)
    assert (tmp_path / "app1-sandbox.apps.form.log").exists()


@pytest.mark.slow
def test_teardown_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
            launch_form(sb)
            pids = [sb.xvfb.pid, sb.apps[0].proc.pid]
            raise RuntimeError("boom")
    assert wait_gone(pids) == []


@pytest.mark.slow
def test_two_sandboxes_at_once_get_their_own_displays(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with Sandbox(workdir=tmp_path / "a", cwd=tmp_path) as a, Sandbox(screen=(1024, 768), workdir=tmp_path / "b", cwd=tmp_path) as b:
        assert a.display != b.display
        launch_form(a)
        assert [w.title for w in list_windows(a.display)] == ["Registration"]
        assert list_windows(b.display) == []  # the app went to a's display only
        assert display_size(b.display) == (1024, 768)


@pytest.mark.slow
def test_existing_display_is_used_not_started_nor_stopped(xvfb, tmp_path):
    with Sandbox(display=xvfb, workdir=tmp_path, cwd=tmp_path) as sb:
        assert sb.xvfb is None and sb.display == xvfb
        assert sb.screen == (1280, 800)
        launch_form(sb)
        app = sb.apps[0].proc.pid
    assert wait_gone([app]) == []
    assert display_size(xvfb) == (1280, 800)  # the display we were lent is still there


def test_unreachable_display_is_one_clear_error(tmp_path):
    with pytest.raises(SandboxError, match=r"cannot open display :4093: is an X server running there\?"):
        with Sandbox(display=":4093", workdir=tmp_path, cwd=tmp_path):
            pass


@pytest.mark.slow
def test_app_crashing_at_start_fails_fast_with_its_exit_code(tmp_path):
    # The window timeout is long: only the crash detection can end this test quickly.
    step = SetupStep(launch=[*CRASH, "--code", "7"], wait_for_window="Crash", timeout_s=600)
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        with pytest.raises(SandboxError) as err:
            sb.run_setup([step])
    msg = str(err.value)
    assert msg == ("app 'python -m sandbox.apps.crash --code 7' exited with code 7 before window 'Crash' "
                   "appeared: crash: simulated crash at start").replace("python", os.path.basename(sys.executable))
    assert "\n" not in msg


@pytest.mark.slow
def test_check_apps_reports_an_app_that_dies_later(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        sb.run_setup([SetupStep(launch=[*CRASH, "--after", "0.5"], wait_for_window="^Crash$")])
        sb.check_apps()  # alive now: no error
        deadline = time.monotonic() + GONE_TIMEOUT_S
        with pytest.raises(SandboxError, match=r"exited with code 3: crash: simulated crash after 0.5 s$"):
            while time.monotonic() < deadline:
                sb.check_apps()
                time.sleep(0.05)


@pytest.mark.slow
def test_app_that_exits_cleanly_is_not_a_crash(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        app = sb.launch([sys.executable, "-c", "pass"])
        app.proc.wait(timeout=GONE_TIMEOUT_S)
        sb.check_apps()
        with pytest.raises(SandboxError, match=r"window 'Nope' did not appear on :\d+ within 0.3 s \(app '.*' had exited with code 0\)"):
            sb.wait_for_window("Nope", timeout_s=0.3)


@pytest.mark.slow
def test_run_step_failure_names_command_and_stderr(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        sb.run_setup([SetupStep(run=["sh", "-c", "echo ok > done.txt"])])  # cwd: the task folder
        assert (tmp_path / "done.txt").read_text() == "ok\n"
        with pytest.raises(SandboxError, match=r"^setup command 'sh -c echo oops >&2; exit 4' exited with code 4: oops$"):
            sb.run_setup([SetupStep(run=["sh", "-c", "echo oops >&2; exit 4"])])
        with pytest.raises(SandboxError, match="did not finish in 0.2 s"):
            sb.run_setup([SetupStep(run=["sleep", "30"], timeout_s=0.2)])
        with pytest.raises(SandboxError, match="cannot launch 'no-such-program-xyz'"):
            sb.run_setup([SetupStep(launch=["no-such-program-xyz"])])


@pytest.mark.slow
def test_setup_placeholders_and_display(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        sb.run_setup([SetupStep(run=["{python}", "-c",
                                     "import os, sys; open(sys.argv[1], 'w').write(os.environ['DISPLAY'])",
                                     "{workdir}/display.txt"])])
        assert (tmp_path / "display.txt").read_text() == sb.display


# A child process that holds a sandbox with the form app, prints the pids, and waits.
CHILD = """
import json, sys, time
from pathlib import Path
from agent.task import SetupStep
from sandbox.session import Sandbox, terminate_on_sigterm
terminate_on_sigterm()
wd = Path(sys.argv[1])
with Sandbox(workdir=wd, cwd=wd) as sb:
    sb.run_setup([SetupStep(launch=["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/f.json"],
                            wait_for_window="Registration")])
    print(json.dumps({"xvfb": sb.xvfb.pid, "app": sb.apps[0].proc.pid}), flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "sigkill"])
def test_interrupted_run_leaves_nothing_behind(tmp_path, sig):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child never reported its sandbox"
        pids = json.loads(child.stdout.readline())
        assert alive(pids["xvfb"]) and alive(pids["app"])
        child.send_signal(sig)
        code = child.wait(timeout=30)
    finally:
        child.kill()
    assert code != 0
    # SIGINT/SIGTERM: the sandbox tears down; SIGKILL: the kernel's parent-death signal does it.
    assert wait_gone([pids["xvfb"], pids["app"]]) == []


@pytest.mark.slow
def test_teardown_asks_apps_to_terminate_before_killing(tmp_path):
    # SIGTERM first (an app may save state), SIGKILL only after a grace period.
    trap = 'trap "echo term > term.txt; exit 0" TERM; touch ready; while :; do sleep 0.05; done'
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        sb.launch(["sh", "-c", trap])
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert (tmp_path / "term.txt").read_text() == "term\n"


def test_bench_sandbox_with_form_app(benchmark, tmp_path):
    """Start Xvfb, launch the form, wait for its window, tear down (run with --benchmark-only)."""
    def cycle():
        with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
            launch_form(sb)
            return sb.display
    assert benchmark.pedantic(cycle, rounds=5, iterations=1).startswith(":")


@pytest.mark.slow
def test_crash_on_click_is_reported(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=tmp_path) as sb:
        sb.run_setup([SetupStep(launch=[*CRASH, "--on-click", "--code", "5"], wait_for_window="^Crash$")])
        [win] = find_windows(sb.display, "^Crash$")
        subprocess.run(["xdotool", "mousemove", str(win.x + win.w // 2), str(win.y + win.h // 2), "click", "1"],
                       env=sb.env, check=True, timeout=10)
        sb.apps[0].proc.wait(timeout=GONE_TIMEOUT_S)
        with pytest.raises(SandboxError, match=r"exited with code 5: crash: simulated crash on click$"):
            sb.check_apps()
