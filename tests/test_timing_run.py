"""time_forward on real models: structure, devices, and the model left as it was.

These tests check what was measured and how, never how fast it was.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_modelbudget.core.timing.timer import TimingSettings, placement_for, time_forward
from pytest_modelbudget.errors import MeasurementError

QUICK = TimingSettings(time_budget_s=0.2)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 4))


def test_cpu_measurement_structure() -> None:
    model = small_model().eval()
    stats = time_forward(model, (torch.randn(8, 16),), settings=QUICK)
    assert stats.samples >= 3 and stats.calls >= stats.samples
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.iqr_ms >= 0 and stats.wall_s > 0
    assert stats.batch_size == 8
    assert stats.throughput == pytest.approx(8e3 / stats.median_ms)
    assert stats.peak_memory is None
    assert stats.fingerprint.startswith("cpu | ") and stats.fingerprint.endswith(
        "| 1 thread | float32 | eager"
    )
    assert stats.fingerprint == placement_for(model, (torch.randn(8, 16),), QUICK).fingerprint


def test_one_thread_cpu_timing_rests_on_the_models_own_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_modelbudget.core.timing import own_time

    stats = time_forward(small_model().eval(), (torch.randn(8, 16),), settings=QUICK)
    expected = "sched" if own_time.sched_available() else "thread"  # Linux: wall less run-queue waits
    assert stats.own_clock == expected and stats.relative is not None and stats.relative > 0
    monkeypatch.setattr(own_time, "sched_available", lambda: False)  # macOS, Windows, no schedstat
    fallback = time_forward(small_model().eval(), (torch.randn(8, 16),), settings=QUICK)
    assert fallback.own_clock == "thread" and fallback.relative is not None
    two = time_forward(
        small_model().eval(), (torch.randn(8, 16),), settings=TimingSettings(threads=2, time_budget_s=0.2)
    )
    assert two.own_clock == "wall"  # other threads' work is not in the calling thread's CPU time


HEAP_PROBE = """
import ctypes, sys
import torch
from pytest_modelbudget.core.devices import steady_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "steady":
    assert steady_heap() is True
mapped = libc.mallinfo2().hblkhd
buffer = torch.zeros(4 * 2**20)  # 16 MiB
print(libc.mallinfo2().hblkhd - mapped)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_steady_heap_serves_activation_sized_buffers_from_the_heap(tmp_path: Path) -> None:
    # A fresh process maps a 16 MiB buffer on its own (glibc's default threshold is 128 KiB
    # until a free raises it); after steady_heap() it comes from the heap, in every process.
    script = tmp_path / "heap.py"
    script.write_text(HEAP_PROBE)

    def mapped_bytes(mode: str) -> int:
        done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    assert mapped_bytes("default") >= 16 * 2**20
    assert mapped_bytes("steady") == 0


def test_thread_count_is_fixed_then_restored() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x * 2

    stats = time_forward(Spy(), (torch.randn(2),), settings=TimingSettings(threads=2, time_budget_s=0.05))
    assert set(seen) == {2}
    assert torch.get_num_threads() == before
    assert "| 2 threads |" in stats.fingerprint


def test_timing_runs_without_grad() -> None:
    modes: list[bool] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            modes.append(torch.is_grad_enabled())
            return x

    time_forward(Spy(), (torch.randn(2),), settings=TimingSettings(time_budget_s=0.05))
    assert modes and not any(modes)


def test_model_in_train_mode_is_left_as_it_was() -> None:
    model = small_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = torch.randn(8, 16)
    rng = torch.get_rng_state()
    time_forward(model, (inputs,), settings=QUICK)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats restored
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's draws undone


def test_forward_that_raises_propagates_and_leaves_the_model() -> None:
    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 3:
                raise ValueError("boom on call 4")
            return self.bn(x)

    model = Flaky().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="boom on call 4"):
        time_forward(model, (torch.randn(3, 4),), settings=QUICK)
    assert model.calls == 0  # attribute restored too
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_cuda_graph_needs_cuda() -> None:
    with pytest.raises(MeasurementError, match="cuda_graph timing needs a CUDA device"):
        time_forward(small_model(), (torch.randn(2, 16),), settings=TimingSettings(cuda_graph=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_named_cuda_device_without_cuda() -> None:
    with pytest.raises(MeasurementError, match="CUDA is not available"):
        time_forward(small_model(), (torch.randn(2, 16),), settings=TimingSettings(device="cuda"))


@cuda
def test_cuda_timing_moves_the_model_and_back() -> None:
    model = small_model().eval()
    stats = time_forward(
        model, (torch.randn(64, 16),), settings=TimingSettings(device="cuda", time_budget_s=0.3)
    )
    assert stats.fingerprint.startswith("cuda | ") and stats.fingerprint.endswith("| float32 | eager")
    assert stats.peak_memory is not None and stats.peak_memory > 0
    assert next(model.parameters()).device.type == "cpu"


@cuda
def test_cuda_graph_timing() -> None:
    model = small_model().eval().cuda()
    stats = time_forward(
        model,
        (torch.randn(64, 16, device="cuda"),),
        settings=TimingSettings(cuda_graph=True, time_budget_s=0.3),
    )
    assert stats.fingerprint.endswith("| cuda-graph") and stats.samples >= 3


@cuda
def test_uncapturable_forward_is_a_clear_error() -> None:
    class Syncs(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float(x.sum().item())  # a host sync: not capturable

    with pytest.raises(MeasurementError, match="cannot be captured as a CUDA graph"):
        time_forward(
            Syncs().cuda(), (torch.randn(4, device="cuda"),), settings=TimingSettings(cuda_graph=True)
        )


@cuda
def test_out_of_memory_is_a_clear_error_and_memory_is_freed() -> None:
    class Hungry(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            free, _ = torch.cuda.mem_get_info()
            return torch.empty(free * 2, dtype=torch.uint8, device=x.device)

    before = torch.cuda.memory_allocated()
    with pytest.raises(MeasurementError, match="ran out of memory"):
        time_forward(Hungry(), (torch.randn(4, device="cuda"),), settings=QUICK)
    assert torch.cuda.memory_allocated() == before
