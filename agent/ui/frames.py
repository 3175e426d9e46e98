"""The live display as a stream of JPEG frames: one grabber per display, running only while someone
watches, shared by every viewer.

The grabber is a process of its own (agent/ui/grab.py: its own X connection, the run's desktop is
never touched), so that encoding frames never holds the run's interpreter lock; it skips a frame
identical to the last one (a memcmp: a still screen costs a grab a tick and no encoding). A thread
here reads its frames; viewers take the newest (a slow viewer skips frames, never delays the
capture or the run). A frame carries its capture time, so the page and the benchmark can tell how
far behind the display it is. Where the task masks secrets in screenshots, frames are grabbed and
masked on a thread here instead (the mask needs this process's secrets).
"""
from __future__ import annotations

import io
import os
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FPS = 8  # capture rate; the target is >= 5 frames/s at 1280x800
JPEG_QUALITY = 70
IDLE_STOP_S = 2.0  # the thread stops this long after the last viewer left


@dataclass(frozen=True)
class Frame:
    seq: int
    t: float  # time.time() of the grab
    jpeg: bytes
    size: tuple[int, int]


class FrameSource:
    def __init__(self, display: str, fps: float = FPS, mask=None, xauthority: str | None = None):
        """`mask(image) -> image`: paints over what must not be shown (secrets), or None.
        `xauthority`: the display's cookie file when this process does not hold it (a run in another process)."""
        self.display, self.period, self.mask, self.xauthority = display, 1.0 / fps, mask, xauthority
        self.latest: Frame | None = None
        self.stats = {"grabs": 0, "encoded": 0, "grab_ms": 0.0, "encode_ms": 0.0}
        self._cv = threading.Condition()
        self._viewers = 0
        self._last_viewer = 0.0
        self.listeners: list = []  # called after each new frame (the frame streams' wake-ups)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.error: str | None = None

    # ---- viewers

    def watch(self):
        """A viewer arrives (pair with leave()); starts the capture thread if needed."""
        with self._cv:
            self._viewers += 1
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._loop, name=f"frames{self.display}", daemon=True)
                self._thread.start()

    def leave(self):
        with self._cv:
            self._viewers = max(0, self._viewers - 1)
            self._last_viewer = time.monotonic()

    def next(self, after: int, timeout: float = 1.0) -> Frame | None:
        """The newest frame with seq > after, waiting up to `timeout` (None if none came)."""
        with self._cv:
            self._cv.wait_for(lambda: (self.latest is not None and self.latest.seq > after) or self._stop, timeout)
            f = self.latest
        return f if f is not None and f.seq > after else None

    def close(self):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- the capture thread

    def _loop(self):
        if self.mask is None:
            self._read_grabber()
        else:
            self._capture_here()

    def _idle(self) -> bool:
        with self._cv:
            return self._stop or (self._viewers == 0 and time.monotonic() - self._last_viewer > IDLE_STOP_S)

    def _read_grabber(self):
        import subprocess

        from agent.ui.grab import HEADER
        from sandbox.procs import spawn

        # spawned from this thread, which lives as long as the grabber: it dies with it (PDEATHSIG)
        proc = spawn([sys.executable, "-m", "agent.ui.grab", self.display, f"{1 / self.period:g}", str(JPEG_QUALITY)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                     env={**os.environ, "XAUTHORITY": self.xauthority} if self.xauthority else None)
        fd, seq = proc.stdout.fileno(), 0

        def read(n: int) -> bytes | None:
            chunks, left = [], n
            while left:
                chunk = os.read(fd, left)
                if not chunk:
                    return None
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

        try:
            while not self._idle():
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    continue
                head = read(HEADER.size)
                body = read(HEADER.unpack(head)[3]) if head else None
                if body is None:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                    self.error = f"display {self.display}: {err[-1] if err else 'the grabber ended'}"
                    return
                t, w, h, _ = HEADER.unpack(head)
                seq += 1
                self.stats["encoded"] += 1
                with self._cv:
                    self.latest = Frame(seq, t, body, (w, h))
                    self._cv.notify_all()
                    wake = list(self.listeners)
                for notify in wake:
                    notify()
        finally:
            self.stats["grabber_cpu_s"] = self.stats.get("grabber_cpu_s", 0.0) + _cpu_s(proc.pid)
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def _capture_here(self):
        import mss
        from PIL import Image

        try:
            grabber = mss.MSS(display=self.display)
        except Exception as e:
            self.error = f"cannot open display {self.display}: {e}"
            return
        previous, seq = b"", 0
        try:
            while True:
                with self._cv:
                    if self._stop or (self._viewers == 0 and time.monotonic() - self._last_viewer > IDLE_STOP_S):
                        return
                t0 = time.perf_counter()
                t = time.time()
                try:
                    shot = grabber.grab(grabber.monitors[0])
                except Exception as e:  # the display is gone (the run ended)
                    self.error = f"display {self.display}: {type(e).__name__}"
                    return
                raw = bytes(shot.raw)
                t1 = time.perf_counter()
                self.stats["grabs"] += 1
                self.stats["grab_ms"] += (t1 - t0) * 1e3
                if raw != previous:
                    previous = raw
                    image = Image.frombytes("RGB", shot.size, raw, "raw", "BGRX")
                    if self.mask is not None:
                        try:
                            image = self.mask(image)
                        except Exception as e:  # fail closed: a frame that cannot be masked is not shown
                            self.error = f"display {self.display}: frames cannot be masked: {e}"
                            return
                    buf = io.BytesIO()
                    image.save(buf, "JPEG", quality=JPEG_QUALITY)
                    seq += 1
                    self.stats["encoded"] += 1
                    self.stats["encode_ms"] += (time.perf_counter() - t1) * 1e3
                    with self._cv:
                        self.latest = Frame(seq, t, buf.getvalue(), shot.size)
                        self._cv.notify_all()
                        wake = list(self.listeners)
                    for notify in wake:
                        notify()
                time.sleep(max(0.0, self.period - (time.perf_counter() - t0)))
        finally:
            try:
                grabber.close()
            except Exception:  # the display went first (the run's sandbox is gone)
                pass


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc (0 when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def mjpeg_part(frame: Frame) -> bytes:
    """One part of a multipart/x-mixed-replace stream (an <img> shows each as it comes)."""
    head = (f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n"
            f"X-Frame-Time: {frame.t:.4f}\r\nX-Frame-Seq: {frame.seq}\r\n\r\n").encode()
    return head + frame.jpeg + b"\r\n"
