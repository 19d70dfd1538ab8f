"""A timer for pytest-benchmark that is correct on GPU.

pytest-benchmark times with ``time.perf_counter``; CUDA kernels run asynchronously, so on
a GPU it measures how long it took to *queue* the work. Pass this timer instead:

    pytest --benchmark-timer pytest_modelbudget.benchmark_timer.synchronized_perf_counter

It waits for the current CUDA device to finish before reading the clock. Without CUDA (or
before torch has used it) it is plain ``perf_counter``, at no extra cost.
"""

from __future__ import annotations

import sys
import time


def synchronized_perf_counter() -> float:
    torch = sys.modules.get("torch")  # never import torch just to read a clock
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()
