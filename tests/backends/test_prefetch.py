"""Cold-start jobs beside the modeling import (agent/backends/prefetch.py)."""
from __future__ import annotations

from agent.backends import load_backend
from agent.backends.prefetch import Prefetch


def test_readahead_of_the_weight_files_and_no_device_job_on_the_cpu(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4096)
    jobs = Prefetch(str(tmp_path), "cpu")
    assert jobs.wait() >= 0
    assert set(jobs.timings) == {"readahead_s"}
    assert set(Prefetch(None, "cpu").timings) == set()


def test_the_load_reports_its_phases():
    timings = load_backend("tiny-random").load_timings
    assert {"import_s", "processor_s", "prefetch_wait_s", "readahead_s", "weights_s"} <= set(timings)
