"""Timing a piece of GPU work the way a decode step runs it: captured once as a CUDA graph, replayed."""
import time

import torch


def graph_time(fn, reps=20):
    """Milliseconds per replay of `fn` captured as a CUDA graph (after warm-up runs on a side stream,
    where lazy initialisation and Triton's compilation happen)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3
