#!/usr/bin/env python
"""Benchmark pytest-modelbudget's counter against peer MAC/param counters.

Three sections (all run by default, pick with ``--only``):

``zoo``
    Every torchvision classification model, built with ``weights=None`` at its default
    weights' input size, counted by this plugin's ``count()`` and by thop, ptflops
    (``backend='pytorch'`` and ``backend='aten'``), fvcore and
    ``torch.utils.flop_counter.FlopCounterMode``. Each count is compared with the
    reference in ``weights.meta`` (``_ops`` in giga-MACs to 3 decimals, ``num_params``
    exactly) and timed (median of a few runs, model construction excluded). Peers run
    on a fresh deep copy of the model each time; whether a counter leaves the model
    (attributes, buffers, hooks, training flags) or torch's globals changed is
    recorded. Each model runs in its own subprocess, so no peer's leftovers leak into
    the next model.
``scaling``
    This plugin's cost on a normally built (CPU, eval) resnet50 at 1x3x224x224,
    1x3x896x896 and 64x3x224x224, next to the cost of one plain forward.
``llm``
    A ~6.7B-parameter decoder-only transformer (LLaMA-7B shapes, plain ``torch.nn``)
    built on the meta device and counted end to end for a 1x2048 token input, in a
    fresh subprocess that reports wall time and peak RSS; the same for
    ``FlopCounterMode``.

Peers are optional: a counter whose package is missing shows ``n/a``. Example::

    python benchmarks/counting.py --quick
    python benchmarks/counting.py --models resnet50,vit_b_16 --json out.json
    python benchmarks/counting.py --skip-peers --only zoo,scaling
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

COUNTERS = ("modelbudget", "thop", "ptflops-pytorch", "ptflops-aten", "fvcore", "FlopCounterMode")
PEERS = COUNTERS[1:]
QUICK_MODELS = (
    "resnet50",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "densenet121",
    "vit_b_16",
    "swin_t",
    "convnext_tiny",
    "inception_v3",
)
REQUIRES = {
    "modelbudget": "pytest_modelbudget",
    "thop": "thop",
    "ptflops-pytorch": "ptflops",
    "ptflops-aten": "ptflops",
    "fvcore": "fvcore",
    "FlopCounterMode": "torch",
}


def available(counter: str) -> bool:
    return importlib.util.find_spec(REQUIRES[counter]) is not None


# --------------------------------------------------------------------------- models


def build_model(name: str) -> tuple[Any, int, dict[str, Any]]:
    """The untrained model, its input side and the default weights' reference numbers."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    side = int(weights.transforms().crop_size[0])
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": False}
    if name.startswith("vit_"):
        kwargs["image_size"] = int(weights.meta["min_size"][0])
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    reference = {
        "weights": str(weights),
        "gmacs": float(weights.meta["_ops"]),
        "params": int(weights.meta["num_params"]),
        "build_kwargs": kwargs,
    }
    return model, side, reference


# ------------------------------------------------------------------------- counters


def _count_modelbudget(model: Any, x: Any) -> tuple[int, int | None, dict[str, Any]]:
    from pytest_modelbudget.core.counting.count import count

    counts = count(model, (x,))
    return (
        counts.macs,
        counts.params,
        {
            "executed_on": counts.executed_on,
            "uncounted": dict(counts.uncounted),
        },
    )


def _count_thop(model: Any, x: Any) -> tuple[int, int | None, dict[str, Any]]:
    import thop

    macs, params = thop.profile(model, inputs=(x,), verbose=False)
    return int(macs), int(params), {}


def _ptflops(backend: str) -> Callable[[Any, Any], tuple[int, int | None, dict[str, Any]]]:
    def run(model: Any, x: Any) -> tuple[int, int | None, dict[str, Any]]:
        from ptflops import get_model_complexity_info

        macs, params = get_model_complexity_info(
            model,
            tuple(x.shape[1:]),
            as_strings=False,
            print_per_layer_stat=False,
            verbose=False,
            backend=backend,
            input_constructor=lambda _res: x,
        )
        if macs is None:
            raise RuntimeError("ptflops returned None (it printed the exception above)")
        return int(macs), int(params), {}

    return run


def _count_fvcore(model: Any, x: Any) -> tuple[int, int | None, dict[str, Any]]:
    from fvcore.nn import FlopCountAnalysis, parameter_count

    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    macs = analysis.total()  # fvcore's "flop" is one fused multiply-add
    params = parameter_count(model)[""]
    return int(macs), int(params), {"unsupported": dict(analysis.unsupported_ops())}


def _count_flopcountermode(model: Any, x: Any) -> tuple[int, int | None, dict[str, Any]]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2, None, {}  # it counts no parameters


PREIMPORT = {
    "modelbudget": "pytest_modelbudget.core.counting.count",
    "thop": "thop",
    "ptflops-pytorch": "ptflops",
    "ptflops-aten": "ptflops",
    "fvcore": "fvcore.nn",
    "FlopCounterMode": "torch.utils.flop_counter",
}

RUNNERS: dict[str, Callable[[Any, Any], tuple[int, int | None, dict[str, Any]]]] = {
    "modelbudget": _count_modelbudget,
    "thop": _count_thop,
    "ptflops-pytorch": _ptflops("pytorch"),
    "ptflops-aten": _ptflops("aten"),
    "fvcore": _count_fvcore,
    "FlopCounterMode": _count_flopcountermode,
}


# ------------------------------------------------------------------ mutation checks

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def model_snapshot(model: Any) -> dict[str, Any]:
    modules = {}
    for path, module in model.named_modules():
        modules[path] = {
            "attrs": frozenset(vars(module)),
            "buffers": frozenset(module._buffers),
            "params": frozenset(module._parameters),
            "hooks": sum(len(getattr(module, h, {})) for h in _HOOK_DICTS),
            "training": module.training,
        }
    return {
        "modules": modules,
        "state_dict": frozenset(model.state_dict().keys()),
        "requires_grad": tuple(p.requires_grad for p in model.parameters()),
    }


def model_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences, aggregated over modules ("+attr __flops__ x161")."""
    changes: Counter[str] = Counter()
    for path in before["modules"].keys() | after["modules"].keys():
        b, a = before["modules"].get(path), after["modules"].get(path)
        if b is None or a is None:
            changes["module added" if b is None else "module removed"] += 1
            continue
        for kind in ("attrs", "buffers", "params"):
            for name in a[kind] - b[kind]:
                changes[f"+{kind[:-1]} {name}"] += 1
            for name in b[kind] - a[kind]:
                changes[f"-{kind[:-1]} {name}"] += 1
        if a["hooks"] != b["hooks"]:
            changes[f"hooks {a['hooks'] - b['hooks']:+d}"] += 1
        if a["training"] != b["training"]:
            changes[f"training -> {a['training']}"] += 1
    extra_keys = after["state_dict"] - before["state_dict"]
    if extra_keys:
        changes["+state_dict keys"] = len(extra_keys)
    if after["requires_grad"] != before["requires_grad"]:
        changes["requires_grad changed"] += 1
    return [f"{what} x{n}" for what, n in sorted(changes.items())]


def global_snapshot() -> dict[str, Any]:
    """What every public name of the namespaces a counter might monkeypatch resolves to."""
    import torch
    import torch.nn.functional as F
    from torch.nn.modules import module as module_mod

    seen: dict[str, Any] = {}
    for label, namespace in (
        ("torch", torch),
        ("F", F),
        ("Tensor", torch.Tensor),
        ("nn.Module", torch.nn.Module),
    ):
        for key in dir(namespace):
            if key != "__warningregistry__":  # the warnings module's bookkeeping
                seen[f"{label}.{key}"] = getattr(namespace, key, None)
    for key in dir(module_mod):
        if key.startswith("_global_") and key.endswith("hooks"):
            seen[f"global hooks {key}"] = len(getattr(module_mod, key))
    return seen


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:  # bound classmethods are new objects on each access but compare equal
        return type(a) is type(b) and not hasattr(a, "shape") and bool(a == b)
    except Exception:
        return False


def global_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(
        k
        for k in before.keys() | after.keys()
        if k not in before or k not in after or not _same(before[k], after[k])
    )


# ------------------------------------------------------------------------ one model


def worker(name: str, counters: list[str], repeat: int, max_seconds: float) -> dict[str, Any]:
    import torch

    # Import every counter's package now, so no timed run pays for an import.
    for counter in counters:
        if available(counter):
            __import__(PREIMPORT[counter])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, side, reference = build_model(name)
    build_s = time.perf_counter() - t0
    x = torch.randn(1, 3, side, side)
    pristine = model_snapshot(model)
    row: dict[str, Any] = {
        "model": name,
        "input": [1, 3, side, side],
        "reference": reference,
        "build_s": round(build_s, 3),
        "counters": {},
    }
    for counter in counters:
        if not available(counter):
            row["counters"][counter] = {"status": "n/a"}
            continue
        run = RUNNERS[counter]
        # The plugin runs on the model itself (it promises to leave it alone); peers
        # on a fresh deep copy each time, made outside the timed region.
        on_copy = counter != "modelbudget"
        times: list[float] = []
        result: dict[str, Any] = {}
        before_model: dict[str, Any] = {}
        before_globals: dict[str, Any] = {}
        try:
            for attempt in range(repeat):
                subject = copy.deepcopy(model) if on_copy else model
                if attempt == 0:
                    before_model, before_globals = model_snapshot(subject), global_snapshot()
                with torch.no_grad():
                    start = time.perf_counter()
                    macs, params, extra = run(subject, x)
                    times.append(time.perf_counter() - start)
                if attempt == 0:
                    result = {
                        "status": "ok",
                        "macs": macs,
                        "params": params,
                        "mutates_model": model_changes(before_model, model_snapshot(subject)),
                        "patches_globals": global_changes(before_globals, global_snapshot()),
                        **extra,
                    }
                elif macs != result["macs"]:
                    result["unstable_macs"] = [*result.get("unstable_macs", []), macs]
                del subject
                if sum(times) >= max_seconds:
                    break
        except Exception as error:
            result = {"status": "error", "error": f"{type(error).__name__}: {error}"[:300]}
        if times and result.get("status") == "ok":
            result["times_s"] = [round(t, 5) for t in times]
            result["median_s"] = statistics.median(times)
            result["macs_match"] = round(result["macs"] / 1e9, 3) == reference["gmacs"]
            result["params_match"] = (
                None if result["params"] is None else result["params"] == reference["params"]
            )
        row["counters"][counter] = result
    row["original_model_unchanged"] = model_changes(pristine, model_snapshot(model)) == []
    row["loadavg_1min_after"] = os.getloadavg()[0]  # other work on the machine skews timings
    return row


def run_worker_subprocess(
    name: str, counters: list[str], repeat: int, max_seconds: float, timeout: float, threads: int | None
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out_path = handle.name
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--_worker",
        name,
        "--_out",
        out_path,
        "--_counters",
        ",".join(counters),
        "--repeat",
        str(repeat),
        "--max-seconds",
        str(max_seconds),
        *(["--threads", str(threads)] if threads else []),
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            with open(out_path) as f:
                loaded: dict[str, Any] = json.load(f)
            return loaded
        tail = (proc.stdout + proc.stderr)[-600:]
        return {"model": name, "failed": f"worker exit {proc.returncode}: {tail}", "counters": {}}
    except subprocess.TimeoutExpired:
        return {"model": name, "failed": f"worker timed out after {timeout}s", "counters": {}}
    finally:
        if os.path.exists(out_path):
            os.unlink(out_path)


# -------------------------------------------------------------------------- tables


def _fmt_gmacs(result: dict[str, Any] | None) -> str:
    if not result or result.get("status") == "n/a":
        return "n/a"
    if result.get("status") != "ok":
        return "error"
    return f"{result['macs'] / 1e9:.3f}{' ✓' if result['macs_match'] else ' ✗'}"


def _fmt_params(result: dict[str, Any] | None) -> str:
    if not result or result.get("status") == "n/a":
        return "n/a"
    if result.get("status") != "ok":
        return "error"
    if result["params"] is None:
        return "—"
    return f"{result['params'] / 1e6:.3f}{' ✓' if result['params_match'] else ' ✗'}"


def _fmt_time(result: dict[str, Any] | None) -> str:
    if not result or result.get("status") != "ok":
        return "n/a" if not result or result.get("status") == "n/a" else "error"
    return f"{result['median_s'] * 1e3:.1f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def zoo_tables(rows: list[dict[str, Any]], counters: list[str]) -> str:
    macs_rows, param_rows, time_rows = [], [], []
    for row in rows:
        name = row["model"]
        if "failed" in row:
            macs_rows.append([name, "", "", *(["failed"] * len(counters))])
            continue
        side = f"{row['input'][2]}"
        results = [row["counters"].get(c) for c in counters]
        macs_rows.append([name, side, f"{row['reference']['gmacs']:.3f}", *map(_fmt_gmacs, results)])
        param_rows.append([name, f"{row['reference']['params'] / 1e6:.3f}", *map(_fmt_params, results)])
        time_rows.append([name, *map(_fmt_time, results)])
    return "\n\n".join(
        [
            "GMACs (✓ = round(macs/1e9, 3) equals weights.meta['_ops'])\n\n"
            + markdown_table(["model", "input", "_ops", *counters], macs_rows),
            "Params in millions (✓ = exactly weights.meta['num_params']; — = not counted)\n\n"
            + markdown_table(["model", "num_params", *counters], param_rows),
            "Median time per count, ms (model construction excluded)\n\n"
            + markdown_table(["model", *counters], time_rows),
        ]
    )


def zoo_summary(rows: list[dict[str, Any]], counters: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"models": len(rows), "counters": {}}
    for counter in counters:
        results = [r["counters"].get(counter, {}) for r in rows]
        ok = [r for r in results if r.get("status") == "ok"]
        if not ok and all(r.get("status") == "n/a" for r in results):
            summary["counters"][counter] = {"status": "n/a"}
            continue
        mutations: Counter[str] = Counter()
        patches: Counter[str] = Counter()
        for r in ok:
            for change in r["mutates_model"]:
                mutations[change.rsplit(" x", 1)[0]] += 1
            for change in r["patches_globals"]:
                patches[change] += 1
        resnet50 = next((r["counters"].get(counter) for r in rows if r["model"] == "resnet50"), None)
        summary["counters"][counter] = {
            "ok": len(ok),
            "errors": sum(r.get("status") == "error" for r in results),
            "macs_matches": sum(bool(r.get("macs_match")) for r in ok),
            "params_matches": (
                None if all(r["params"] is None for r in ok) else sum(bool(r.get("params_match")) for r in ok)
            ),
            "median_ms": statistics.median(r["median_s"] for r in ok) * 1e3 if ok else None,
            "total_s": sum(r["median_s"] for r in ok),
            "resnet50_ms": (
                resnet50["median_s"] * 1e3 if resnet50 and resnet50.get("status") == "ok" else None
            ),
            "models_mutated": sum(bool(r["mutates_model"]) for r in ok),
            "mutations": dict(mutations.most_common()),
            "models_with_globals_left_patched": sum(bool(r["patches_globals"]) for r in ok),
            "globals_left_patched": dict(patches.most_common(10)),
        }
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    n = summary["models"]
    rows = []
    for counter, s in summary["counters"].items():
        if s.get("status") == "n/a":
            rows.append([counter, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        params = "—" if s["params_matches"] is None else f"{s['params_matches']}/{n}"
        rows.append(
            [
                counter,
                f"{s['macs_matches']}/{n}",
                params,
                f"{s['errors']}",
                f"{s['median_ms']:.1f}" if s["median_ms"] is not None else "n/a",
                f"{s['resnet50_ms']:.1f}" if s["resnet50_ms"] is not None else "n/a",
                f"{s['total_s']:.1f}",
                f"{s['models_mutated']}/{s['ok']}",
            ]
        )
    return markdown_table(
        [
            "counter",
            "MACs match",
            "params match",
            "errors",
            "median ms",
            "resnet50 ms",
            "sum of medians s",
            "models mutated",
        ],
        rows,
    )


# ------------------------------------------------------------------------- scaling


def scaling(runs: int, forward_runs: int) -> list[dict[str, Any]]:
    import torch
    import torchvision

    from pytest_modelbudget.core.counting.count import count

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    results = []
    for shape in ((1, 3, 224, 224), (1, 3, 896, 896), (64, 3, 224, 224)):
        x = torch.randn(*shape)
        counts = count(model, (x,))  # warm-up, not timed
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            count(model, (x,))
            times.append(time.perf_counter() - start)
        forward = []
        for _ in range(forward_runs):
            with torch.no_grad():
                start = time.perf_counter()
                model(x)
                forward.append(time.perf_counter() - start)
        results.append(
            {
                "input": list(shape),
                "macs": counts.macs,
                "executed_on": counts.executed_on,
                "count_median_ms": statistics.median(times) * 1e3,
                "count_min_ms": min(times) * 1e3,
                "count_max_ms": max(times) * 1e3,
                "runs": runs,
                "forward_median_ms": statistics.median(forward) * 1e3 if forward else None,
                "forward_runs": forward_runs,
            }
        )
        print(
            f"  resnet50 {'x'.join(map(str, shape))}: count {results[-1]['count_median_ms']:.1f} ms, "
            f"plain forward {results[-1]['forward_median_ms'] or float('nan'):.1f} ms",
            file=sys.stderr,
        )
    return results


def scaling_table(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            "x".join(map(str, r["input"])),
            f"{r['macs'] / 1e9:.3f}",
            r["executed_on"],
            f"{r['count_median_ms']:.1f} ({r['count_min_ms']:.1f}-{r['count_max_ms']:.1f})",
            f"{r['forward_median_ms']:.0f}" if r["forward_median_ms"] is not None else "n/a",
        ]
        for r in results
    ]
    return markdown_table(
        ["resnet50 input", "GMACs", "executed on", "count() median ms (min-max)", "plain forward ms"],
        rows,
    )


# ---------------------------------------------------------------------------- LLM

LLM_CONFIG = {
    "layers": 32,
    "d_model": 4096,
    "heads": 32,
    "ffn": 11008,
    "vocab": 32000,
    "tokens": 2048,
}


def make_decoder(layers: int, d_model: int, heads: int, ffn: int, vocab: int) -> Any:
    """A LLaMA-shaped decoder-only transformer from plain torch.nn (RMSNorm, SwiGLU, SDPA)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = nn.RMSNorm(d_model)
            self.q = nn.Linear(d_model, d_model, bias=False)
            self.k = nn.Linear(d_model, d_model, bias=False)
            self.v = nn.Linear(d_model, d_model, bias=False)
            self.o = nn.Linear(d_model, d_model, bias=False)
            self.mlp_norm = nn.RMSNorm(d_model)
            self.gate = nn.Linear(d_model, ffn, bias=False)
            self.up = nn.Linear(d_model, ffn, bias=False)
            self.down = nn.Linear(ffn, d_model, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            h = self.attn_norm(x)
            q, k, v = (
                proj(h).view(b, t, heads, d // heads).transpose(1, 2) for proj in (self.q, self.k, self.v)
            )
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            h = self.mlp_norm(x)
            out: torch.Tensor = x + self.down(F.silu(self.gate(h)) * self.up(h))
            return out

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.RMSNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab, bias=False)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            logits: torch.Tensor = self.lm_head(self.norm(x))
            return logits

    return Decoder()


def analytic_llm_macs(
    layers: int, d_model: int, heads: int, ffn: int, vocab: int, tokens: int
) -> dict[str, int]:
    t, d = tokens, d_model
    projections = 4 * d * d * t
    attention = 2 * t * t * d  # Q@K^T and P@V at full size (no causal halving)
    mlp = 3 * d * ffn * t
    head = d * vocab * t
    return {
        "per_layer_projections": projections,
        "per_layer_attention": attention,
        "per_layer_mlp": mlp,
        "lm_head": head,
        "total": layers * (projections + attention + mlp) + head,
        "total_causal_halved_attention": layers * (projections + attention // 2 + mlp) + head,
    }


def analytic_llm_params(layers: int, d_model: int, heads: int, ffn: int, vocab: int) -> int:
    per_layer = 4 * d_model * d_model + 3 * d_model * ffn + 2 * d_model
    return layers * per_layer + 2 * vocab * d_model + d_model


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _vmhwm_mib() -> float | None:
    """Peak RSS of this process image from /proc (Linux), a cross-check of ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def llm_worker(which: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: import torch, build on meta, count, report."""
    start = time.perf_counter()
    rss_start = _maxrss_mib()
    import torch

    rss_torch = _maxrss_mib()
    import_s = time.perf_counter() - start
    if which == "modelbudget":
        from pytest_modelbudget.core.counting.count import count
    else:
        from torch.utils.flop_counter import FlopCounterMode
    rss_imports = _maxrss_mib()
    cfg = {k: v for k, v in LLM_CONFIG.items() if k != "tokens"}
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = make_decoder(**cfg).eval()
    build_s = time.perf_counter() - t0
    rss_built = _maxrss_mib()
    tokens = torch.zeros(1, LLM_CONFIG["tokens"], dtype=torch.long, device="meta")
    result: dict[str, Any] = {"counter": which}
    t0 = time.perf_counter()
    if which == "modelbudget":
        counts = count(model, (tokens,))
        result.update(
            macs=counts.macs,
            params=counts.params,
            executed_on=counts.executed_on,
            uncounted=dict(counts.uncounted),
            ops=len(counts.ops),
        )
    else:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(tokens)
        result.update(macs=counter.get_total_flops() // 2, params=None)
    count_s = time.perf_counter() - t0
    # A second count in the same process: the steady-state cost.
    t0 = time.perf_counter()
    if which == "modelbudget":
        count(model, (tokens,))
    else:
        with torch.no_grad(), FlopCounterMode(display=False):
            model(tokens)
    second_s = time.perf_counter() - t0
    result.update(
        import_torch_s=import_s,
        build_s=build_s,
        count_s=count_s,
        second_count_s=second_s,
        total_wall_s=time.perf_counter() - start,
        maxrss_start_mib=rss_start,
        maxrss_after_import_torch_mib=rss_torch,
        maxrss_after_imports_mib=rss_imports,
        maxrss_after_build_mib=rss_built,
        maxrss_peak_mib=_maxrss_mib(),
        vmhwm_peak_mib=_vmhwm_mib(),
        real_params=sum(p.numel() for p in model.parameters()),
    )
    return result


def llm(counters: list[str]) -> dict[str, Any]:
    cfg = {k: v for k, v in LLM_CONFIG.items() if k != "tokens"}
    out: dict[str, Any] = {
        "config": LLM_CONFIG,
        "analytic_macs": analytic_llm_macs(**LLM_CONFIG),
        "analytic_params": analytic_llm_params(**cfg),
        "runs": {},
    }
    for which in counters:
        start = time.perf_counter()
        # Linux keeps ru_maxrss across execve, and subprocess starts children with
        # vfork (sharing this process's memory map), so a child exec'd directly from
        # here would report *this* process's peak. A shell that forks the worker
        # (the trailing `exit` keeps it from exec'ing in place) gives a fresh one.
        command = (
            f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(__file__))} --_llm-worker {which}"
        )
        proc = subprocess.run(
            ["/bin/sh", "-c", f"{command}; exit $?"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            out["runs"][which] = {"error": (proc.stdout + proc.stderr)[-600:]}
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["subprocess_wall_s"] = wall
        out["runs"][which] = result
        print(
            f"  6.7B decoder, {which}: {result['macs'] / 1e12:.4f} TMACs in {result['count_s']:.2f} s, "
            f"peak RSS {result['maxrss_peak_mib']:.0f} MiB",
            file=sys.stderr,
        )
    return out


def llm_table(result: dict[str, Any]) -> str:
    analytic = result["analytic_macs"]["total"]
    rows = []
    for which, r in result["runs"].items():
        if "error" in r:
            rows.append([which, "error", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                which,
                f"{r['params']:,}" if r["params"] is not None else "—",
                f"{r['macs']:,}",
                "yes" if r["macs"] == analytic else f"{r['macs'] / analytic:.4f}x",
                f"{r['count_s']:.2f} / {r['second_count_s']:.2f}",
                f"{r['subprocess_wall_s']:.2f}",
                f"{r['maxrss_after_import_torch_mib']:.0f}",
                f"{r['maxrss_after_build_mib']:.0f}",
                f"{r['maxrss_peak_mib']:.0f}",
            ]
        )
    return markdown_table(
        [
            "counter",
            "params",
            "MACs (1x2048 tokens)",
            "= analytic",
            "count s (1st / 2nd)",
            "subprocess wall s",
            "RSS after import torch MiB",
            "after build MiB",
            "peak RSS MiB",
        ],
        rows,
    )


# ---------------------------------------------------------------------------- main


def environment() -> dict[str, Any]:
    import torch
    import torchvision

    cpu = platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
            cpu,
        )
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    for counter in PEERS:
        package = REQUIRES[counter]
        if package != "torch" and available(counter):
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                versions[package] = "?"
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "pytest_modelbudget"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "git_commit": commit,
        "plugin_sources_modified_since_commit": bool(dirty),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated torchvision model names (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_MODELS)}")
    parser.add_argument("--skip-peers", action="store_true", help="count with this plugin only")
    parser.add_argument(
        "--only", default="zoo,scaling,llm", help="comma-separated sections: zoo, scaling, llm"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per counter and model")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop repeating a counter once its runs took this long",
    )
    parser.add_argument("--scaling-runs", type=int, default=20)
    parser.add_argument("--forward-runs", type=int, default=3, help="plain forwards timed for reference")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per model subprocess")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the zoo and scaling runs")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    parser.add_argument("--_counters", help=argparse.SUPPRESS)
    parser.add_argument("--_llm-worker", dest="llm_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads and not args.llm_worker:
        import torch

        torch.set_num_threads(args.threads)
    if args._worker:
        row = worker(args._worker, args._counters.split(","), args.repeat, args.max_seconds)
        with open(args._out, "w") as f:
            json.dump(row, f)
        return 0
    if args.llm_worker:
        print(json.dumps(llm_worker(args.llm_worker)))
        return 0

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    counters = ["modelbudget"] if args.skip_peers else list(COUNTERS)
    report: dict[str, Any] = {"environment": environment(), "command": sys.argv}
    env = report["environment"]
    print(
        f"# {env['cpu']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads); "
        f"{', '.join(f'{k} {v}' for k, v in env['versions'].items())}; commit {env['git_commit']}"
        f"{' + local changes' if env['plugin_sources_modified_since_commit'] else ''}; {env['date']}"
    )
    missing = [c for c in counters if not available(c)]
    if missing:
        print(f"# not installed (shown as n/a): {', '.join(missing)}")
    started = time.perf_counter()

    if "zoo" in sections:
        import torchvision

        if args.models:
            names = [m.strip() for m in args.models.split(",") if m.strip()]
        elif args.quick:
            names = list(QUICK_MODELS)
        else:
            names = torchvision.models.list_models(module=torchvision.models)
        rows = []
        for i, name in enumerate(names, 1):
            t0 = time.perf_counter()
            row = run_worker_subprocess(
                name, counters, args.repeat, args.max_seconds, args.timeout, args.threads
            )
            rows.append(row)
            if args.json:  # keep what is done so far if the run is interrupted
                _write_json(args.json, {**report, "zoo": {"rows": rows, "partial": True}})
            status = row.get("failed") or "  ".join(
                f"{c}={_fmt_gmacs(row['counters'].get(c))}" for c in counters
            )
            print(f"[{i}/{len(names)}] {name} ({time.perf_counter() - t0:.0f}s): {status}", file=sys.stderr)
        summary = zoo_summary(rows, counters)
        report["zoo"] = {"rows": rows, "summary": summary}
        print("\n## Per model\n")
        print(zoo_tables(rows, counters))
        print(f"\n## Summary ({len(rows)} models)\n")
        print(summary_table(summary))
        print()
        for counter, s in summary["counters"].items():
            if s.get("status") == "n/a":
                continue
            mut = "; ".join(f"{k} ({v} models)" for k, v in s["mutations"].items()) or "nothing"
            glob = ", ".join(s["globals_left_patched"]) or "nothing"
            print(f"- {counter}: leaves on the model: {mut}; leaves patched in torch: {glob}")
        unchanged = sum(bool(r.get("original_model_unchanged")) for r in rows)
        print(f"- original model unchanged after all counters: {unchanged}/{len(rows)} models")

    if "scaling" in sections:
        print("\n## Cost vs input size (resnet50, this plugin)\n", flush=True)
        report["scaling"] = scaling(args.scaling_runs, args.forward_runs)
        print(scaling_table(report["scaling"]))

    if "llm" in sections:
        print("\n## 6.7B-parameter decoder on the meta device, 1x2048 tokens\n", flush=True)
        report["llm"] = llm(["modelbudget"] + ([] if args.skip_peers else ["FlopCounterMode"]))
        a = report["llm"]["analytic_macs"]
        print(
            f"analytic: params {report['llm']['analytic_params']:,}; MACs {a['total']:,} "
            f"(per layer {a['per_layer_projections']:,} projections + {a['per_layer_attention']:,} "
            f"attention + {a['per_layer_mlp']:,} MLP; lm_head {a['lm_head']:,})\n"
        )
        print(llm_table(report["llm"]))

    report["total_wall_s"] = time.perf_counter() - started
    print(f"\n# total wall time {report['total_wall_s']:.0f} s")
    if args.json:
        _write_json(args.json, report)
    return 0


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
