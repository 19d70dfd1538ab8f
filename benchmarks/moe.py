"""A Mixtral-8x7B-shaped model counted as CI counts it: a whole ``pytest --model-budget`` process.

Builds Mixtral-8x7B's shapes (32 layers, d_model 4096, 8 experts of SwiGLU 14336, top-2,
32 query / 8 KV heads, vocabulary 32000) in bfloat16 on the meta device -- no weight is
allocated -- and a Llama-3-8B-shaped dense decoder beside it, inside a test that calls
``model_budget(model, ids)`` on a 2,048-token prompt. Each test runs in a fresh
``python -m pytest --model-budget`` process (``--repeat`` times); the script prints the
process's wall time and peak memory (the child's ``ru_maxrss``), and the counted MACs and
active parameters against the analytic ones, which the test itself asserts.

Run from the repository root::

    .venv/bin/python benchmarks/moe.py
    .venv/bin/python benchmarks/moe.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TESTS = """
import pytest
import torch
import transformers

TOKENS = 2048


def _count(model_budget, config, cls):
    with torch.device("meta"):
        model = cls(config).to(torch.bfloat16).eval()
    ids = torch.zeros(1, TOKENS, dtype=torch.long)
    return model_budget(model, ids)


@pytest.mark.model_budget
def test_mixtral_8x7b(model_budget):
    config = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768,
    )
    measured = _count(model_budget, config, transformers.MixtralForCausalLM)
    per_token = 4096 * (4096 + 1024 + 1024 + 4096) + 4096 * 8 + 2 * 3 * 4096 * 14336
    attention = 32 * TOKENS * TOKENS * (128 + 128)  # per layer, dense (SDPA)
    analytic = TOKENS * 32 * per_token + 32 * attention + TOKENS * 4096 * 32000
    assert measured.macs == analytic
    assert measured.counts.active_params == 12_879_925_248
    print("RESULT mixtral_8x7b", measured.macs, analytic, measured.params, measured.counts.active_params)


@pytest.mark.model_budget
def test_llama3_8b(model_budget):
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
    )
    measured = _count(model_budget, config, transformers.LlamaForCausalLM)
    per_token = 4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336
    analytic = TOKENS * 32 * per_token + 32 * 32 * TOKENS * TOKENS * 256 + TOKENS * 4096 * 128256
    assert measured.macs == analytic
    print("RESULT llama3_8b", measured.macs, analytic, measured.params, measured.counts.active_params)
"""


def run_one(folder: Path, test: str) -> tuple[float, float, str]:
    """(wall seconds, peak MB, the RESULT line) of one pytest process."""
    command = [sys.executable, "-m", "pytest", "--model-budget", "-q", "-s", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(
            [*command, f"test_llm.py::{test}"],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
        wall = time.perf_counter() - start
        out.seek(0)
        output = out.read()
    if status != 0:
        raise SystemExit(f"{test} failed:\n{output[-4000:]}")
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    return wall, usage.ru_maxrss / 1024, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "test_llm.py").write_text(textwrap.dedent(TESTS))
        (root / "pytest.ini").write_text("[pytest]\n")
        print(f"`pytest --model-budget` processes, 2,048 tokens, bfloat16 on meta, {args.repeat} runs")
        header = ("model", "MACs", "= analytic", "params", "active params", "wall s", "peak MB")
        print("\n{:<14} {:>18} {:>10} {:>15} {:>15} {:>7} {:>8}".format(*header))
        for test in ("test_mixtral_8x7b", "test_llama3_8b"):
            runs = [run_one(root, test) for _ in range(args.repeat)]
            _, name, macs, analytic, params, active = runs[-1][2].split()
            wall = statistics.median(r[0] for r in runs)
            peak = statistics.median(r[1] for r in runs)
            print(
                f"{name:<14} {int(macs):>18,} {macs == analytic!s:>10} {int(params):>15,} "
                f"{int(active):>15,} {wall:>7.1f} {peak:>8.0f}"
            )


if __name__ == "__main__":
    main()
