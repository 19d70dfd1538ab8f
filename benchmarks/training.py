#!/usr/bin/env python
"""Training-step counts: the memory estimate against MemTracker, and what counting costs.

    .venv/bin/python benchmarks/training.py            # all three sections (about a minute)
    .venv/bin/python benchmarks/training.py --only memory

``memory``
    ``train_memory`` of :func:`pytest_modelbudget.count_train_step` (counted on meta tensors)
    next to the peak that ``torch.distributed._tools.mem_tracker.MemTracker`` reports for the
    same steady-state step run for real on the CPU: the model and its AdamW optimizer tracked
    with ``track_external``, one step run first (so the optimizer state exists), the second
    step tracked (``zero_grad(set_to_none=True)``, forward, loss, backward, ``step``). For
    torchvision resnet18 at batch 8 and a small GPT (the example project's TinyGPT, batch 8 x
    128 tokens), with both breakdowns.
``speed``
    Wall time of counting one training step of resnet50 at batch 32 (AdamW, cross-entropy),
    first count in the process and the median of three more, with the MACs compared to
    ``FlopCounterMode`` on a real batch-2 step (the counts scale exactly with batch).
``llm``
    The LLaMA-7B-shaped decoder of ``benchmarks/counting.py``, built on the meta device and
    counted for a 1x2048 token training step with AdamW: train MACs (against 3x the analytic
    forward MACs: every linear layer and attention computes both gradients), memory by kind
    (against 4 bytes x params for parameters and gradients and 8 bytes x params for AdamW's
    moments) and the wall time, in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

LLAMA_FORWARD_MACS = 14_630_806_093_824  # benchmarks/counting.py, checked analytically there
LLAMA_PARAMS = 6_738_415_616


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def memtracker_peak(model, inputs, target, loss_fn):  # type: ignore[no-untyped-def]
    """Peak bytes (and MemTracker's breakdown) of the second real AdamW step on the CPU."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters())

    def step() -> None:
        # The loop the estimate models: the output is held in a variable until the step ends.
        optimizer.zero_grad(set_to_none=True)
        output = model(*inputs)
        loss = loss_fn(output, target)
        loss.backward()
        optimizer.step()

    step()  # the optimizer state now exists: the tracked step is a steady-state one
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    breakdown = {str(kind): n for kind, n in peak.items() if str(kind) != "Total" and n}
    return peak["Total"], breakdown


def memory_section() -> list[dict[str, object]]:
    import torch
    import torchvision
    from torch import nn

    from example_project.models import TinyGPT
    from pytest_modelbudget import TrainSpec, count_train_step

    torch.manual_seed(0)

    def lm_loss(logits, target):  # type: ignore[no-untyped-def]
        return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    cases = [
        (
            "resnet18, batch 8x3x224x224",
            torchvision.models.resnet18(),
            (torch.randn(8, 3, 224, 224),),
            torch.randint(0, 1000, (8,)),
            nn.CrossEntropyLoss(),
        ),
        (
            "TinyGPT, batch 8x128 tokens",
            TinyGPT(),
            (torch.randint(0, 1000, (8, 128)),),
            torch.randint(0, 1000, (8, 128)),
            lm_loss,
        ),
        (
            # Wide and shallow at a small batch: the peak falls in the optimizer step.
            "MLP 8-512-512, batch 300",
            nn.Sequential(nn.Linear(8, 512), nn.Linear(512, 512)),
            (torch.randn(300, 8),),
            torch.randn(300, 512),
            nn.MSELoss(),
        ),
    ]
    rows = []
    for label, model, inputs, target, loss_fn in cases:
        counts = count_train_step(model, inputs, spec=TrainSpec(target, loss_fn, "adamw"), execution="meta")
        reference, breakdown = memtracker_peak(model, inputs, target, loss_fn)
        # The estimate counts the batch (inputs and target); MemTracker, started after they
        # were made, does not see them.
        batch = sum(t.numel() * t.element_size() for t in (*inputs, target))
        rows.append(
            {
                "model": label,
                "train_memory": counts.memory,
                "memtracker_peak": reference,
                "ratio": counts.memory / reference,
                "batch_bytes": batch,
                "ratio_without_batch": (counts.memory - batch) / reference,
                "estimate_by_kind": dict(counts.memory_by_kind),
                "memtracker_by_kind": breakdown,
            }
        )
        print(
            f"{label}: estimate {_mib(counts.memory)}, MemTracker {_mib(reference)}, "
            f"ratio {counts.memory / reference:.3f} (without the batch's {_mib(batch)}: "
            f"{(counts.memory - batch) / reference:.3f})",
            flush=True,
        )
        print("  estimate:   " + ", ".join(f"{k} {_mib(v)}" for k, v in counts.memory_by_kind.items()))
        print("  MemTracker: " + ", ".join(f"{k} {_mib(v)}" for k, v in breakdown.items()), flush=True)
    return rows


def speed_section() -> dict[str, object]:
    import torch
    import torchvision
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from pytest_modelbudget import TrainSpec, count_train_step

    model = torchvision.models.resnet50()
    x, y = torch.randn(32, 3, 224, 224), torch.randint(0, 1000, (32,))
    spec = TrainSpec(y, nn.CrossEntropyLoss(), "adamw")
    seconds = []
    for _ in range(4):
        start = time.perf_counter()
        counts = count_train_step(model, (x,), spec=spec)
        seconds.append(time.perf_counter() - start)
    twin = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        nn.CrossEntropyLoss()(twin(x[:2]), y[:2]).backward()
    reference = counter.get_total_flops() // 2
    result = {
        "train_macs": counts.macs,
        "flop_counter_batch2_x16": reference * 16,
        "first_s": seconds[0],
        "median_next_s": statistics.median(seconds[1:]),
        "executed_on": counts.executed_on,
    }
    print(
        f"resnet50, batch 32, AdamW: {counts.macs:,} train MACs "
        f"(FlopCounterMode, real batch-2 step x 16: {reference * 16:,}); counted on {counts.executed_on} "
        f"in {seconds[0]:.2f} s (first), {statistics.median(seconds[1:]):.2f} s (median of the next 3)",
        flush=True,
    )
    return result


LLM_WORKER = """
import json, sys, time
sys.path[:0] = {paths!r}
start = time.perf_counter()
import torch
from counting import LLM_CONFIG, make_decoder
from pytest_modelbudget import TrainSpec, count_train_step
imported = time.perf_counter()
with torch.device("meta"):
    model = make_decoder(**{{k: v for k, v in LLM_CONFIG.items() if k != "tokens"}})
built = time.perf_counter()
tokens = torch.zeros(1, LLM_CONFIG["tokens"], dtype=torch.long, device="meta")
counts = count_train_step(model, (tokens,), spec=TrainSpec(optimizer="adamw"), execution="meta")
counted = time.perf_counter()
print(json.dumps({{
    "train_macs": counts.macs, "forward_macs": counts.forward.macs, "params": counts.forward.params,
    "memory": counts.memory, "memory_by_kind": dict(counts.memory_by_kind),
    "import_s": imported - start, "build_s": built - imported, "count_s": counted - built,
}}))
"""


def llm_section() -> dict[str, object]:
    code = LLM_WORKER.format(paths=[str(REPO), str(REPO / "benchmarks")])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    result["subprocess_wall_s"] = wall
    kinds = result["memory_by_kind"]
    assert isinstance(kinds, dict)
    params = int(result["params"])  # type: ignore[call-overload]
    print(
        f"LLaMA-7B-shaped decoder, 1x2048 tokens, AdamW, on meta: {result['train_macs']:,} train MACs "
        f"(3 x analytic forward = {3 * LLAMA_FORWARD_MACS:,}; forward {result['forward_macs']:,}), "
        f"params {params:,} (published {LLAMA_PARAMS:,})",
        flush=True,
    )
    print(
        f"  memory {int(result['memory']) / 1e9:.2f} GB: "  # type: ignore[call-overload]
        + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in kinds.items())
        + f" (4 x params = {4 * params / 1e9:.2f} GB, 8 x params = {8 * params / 1e9:.2f} GB)"
    )
    print(
        f"  count {result['count_s']:.2f} s, build on meta {result['build_s']:.2f} s, "
        f"import {result['import_s']:.2f} s, subprocess wall {wall:.2f} s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="memory,speed,llm", help="comma-separated sections")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    sections = {"memory": memory_section, "speed": speed_section, "llm": llm_section}
    results = {}
    for name in args.only.split(","):
        print(f"\n## {name}\n", flush=True)
        results[name] = sections[name]()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
