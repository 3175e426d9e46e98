"""Cold-start work that runs beside the modeling code's import (agent/backends/hf_import.py).

That import is seconds of Python holding the GIL; these two jobs mostly wait outside it, so they
overlap it in threads instead of following it:
- the CUDA context (torch's lazy CUDA init releases the GIL in its C calls; the driver work is
  0.2-1 s depending on the host), made by one small allocation;
- the checkpoint's weight files into the page cache (the kernel's readahead, asked for with
  posix_fadvise): a first run after a reboot reads GBs from disk; when the files are cached already
  this costs nothing.
Neither job imports anything, so neither can meet the import in the import system's locks.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class Prefetch:
    """Starts both jobs; `wait()` joins them and returns how long it waited (seconds)."""

    def __init__(self, folder: str | None, device: str):
        self.timings: dict[str, float] = {}
        self._threads = []
        if device.startswith("cuda"):
            self._start("cuda_init_s", _cuda_context, device)
        if folder and hasattr(os, "posix_fadvise"):
            self._start("readahead_s", _readahead, folder)

    def _start(self, name: str, job, arg) -> None:
        def timed():
            t = time.perf_counter()
            try:
                job(arg)
            finally:
                self.timings[name] = time.perf_counter() - t
        th = threading.Thread(target=timed, daemon=True, name=f"vlagent-{name[:-2]}")
        th.start()
        self._threads.append(th)

    def wait(self) -> float:
        t = time.perf_counter()
        for th in self._threads:
            th.join()
        return time.perf_counter() - t


def _cuda_context(device: str) -> None:
    import torch  # imported already by the caller: a dictionary lookup

    try:
        torch.empty(1, device=device)
    except RuntimeError:  # the load itself reports a broken device, with its own message
        pass


def _readahead(folder: str) -> None:
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
