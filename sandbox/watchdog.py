"""A sandbox's watchdog: `python -m sandbox.watchdog TAG [FOLDER...]` with its stdin the read end of a pipe whose
write end only vlagent holds. When vlagent ends in any way (kill -9 included) the pipe reads EOF and
the watchdog ends every process of the sandbox (sandbox.procs.kill_tagged): the accessibility bus's
own dbus-daemon, daemons that left their process group. PR_SET_PDEATHSIG reaches only direct children."""
from __future__ import annotations

import os
import shutil
import signal
import sys

from sandbox.procs import kill_tagged


def main() -> None:
    tag = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is vlagent's to handle
    try:
        while os.read(0, 64):
            pass
    except OSError:
        pass
    kill_tagged(tag, grace_s=0.5)
    for folder in sys.argv[2:]:  # the display's cookie folder, when vlagent could not remove it
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
