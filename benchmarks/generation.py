"""Generation budgets as CI runs them: Llama-3-8B counted on meta, and a slower decode step caught.

Part 1 builds Llama-3-8B's shapes (32 layers, d_model 4096, SwiGLU 14336, 32 query / 8 KV
heads, vocabulary 128256) in bfloat16 on the meta device -- no weight is allocated -- inside
a test that calls ``model_budget.generate(model, ids, max_new_tokens=128)`` on a 2,048-token
prompt. The test asserts the prefill MACs, the decode MACs and the KV-cache bytes against
the analytic ones; each run is a fresh ``python -m pytest --model-budget`` process, and the
script prints its wall time and peak memory (the child's ``ru_maxrss``).

Part 2 times a real generation on this machine's CPU: the example project's hand-written
decoder (``CachedGPT``, a static KV cache in buffers), 128-token prompt, 32 new tokens. It
records a baseline with ``--update-budgets``, checks the unchanged model against it, then
makes every decode step run the model twice (``SLOW_DECODE=1``: the prompt's forward is
unchanged) and checks again, printing the time to first token, the decode rate and the
verdicts each run reported.

Run from the repository root::

    .venv/bin/python benchmarks/generation.py
    .venv/bin/python benchmarks/generation.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LLAMA = """
import pytest
import torch
import transformers

PROMPT, NEW = 2048, 128


@pytest.mark.model_budget
def test_llama3_8b_generate(model_budget):
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.zeros(1, PROMPT, dtype=torch.long)  # token ids stay real: generate reads them
    measured = model_budget.generate(model, ids, max_new_tokens=NEW)
    generation = measured.generation
    per_token = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)
    attention = 32 * 32 * 256  # per query and key position: 32 layers x 32 heads x (QK^T + PV)
    logits = 4096 * 128256  # generate asks for the last position's logits only
    prefill = PROMPT * per_token + attention * PROMPT * PROMPT + logits
    # Decode step i feeds one token at position PROMPT + i and attends over PROMPT + i + 1 keys.
    decode = sum(per_token + attention * (PROMPT + i + 1) + logits for i in range(NEW - 1))
    kv_cache = 32 * 2 * 8 * (PROMPT + NEW - 1) * 128 * 2  # layers x (K, V) x heads x positions x dim x bf16
    counted = (generation.prefill.macs, generation.decode.macs, generation.kv_cache)
    assert counted == (prefill, decode, kv_cache)
    assert generation.executed_on == "meta"
    print("RESULT", *counted, generation.kv_cache_by_dtype)
"""

DECODER = """
import os
import time

import pytest
import torch

from example_project.models import CachedGPT

SLOW = os.environ.get("SLOW_DECODE", "")


def step(model, tokens, positions):
    logits = model(tokens, positions)
    if tokens.shape[1] == 1 and not tokens.is_meta:  # a decode step, as timing runs it
        if SLOW == "host":
            time.sleep(0.001)  # 1 ms more per token on the host: same arithmetic, slower decode
        elif SLOW == "work":
            logits = model(tokens, positions)  # the step's work done twice
    return logits


@pytest.mark.model_budget(max_ttft_ms=250, min_decode_tokens_per_s=float(os.environ.get("MIN_RATE", "20")))
def test_cached_gpt_generate(model_budget):
    torch.manual_seed(0)
    model = CachedGPT().eval()
    model.setup_caches(batch=1, max_seq=256)
    prompt = torch.randint(0, 1000, (1, 128))
    model_budget.generate(model, prompt, max_new_tokens=32, step=step)
"""

# The decode-rate limit of the slowed runs: 80% of the rate the baseline recorded.
LIMIT_SHARE = 0.8


def run(folder: Path, *arguments: str, env: dict[str, str] | None = None) -> tuple[float, float, str, int]:
    """(wall seconds, peak MB, output, exit status) of one pytest process."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--model-budget",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        *arguments,
    ]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(
            command,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO), **(env or {})},
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
        wall = time.perf_counter() - start
        out.seek(0)
        output = out.read()
    return wall, usage.ru_maxrss / 1024, output, os.waitstatus_to_exitcode(status)


def llama(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "test_llm.py").write_text(textwrap.dedent(LLAMA))
        (root / "pytest.ini").write_text("[pytest]\n")
        runs = []
        for _ in range(repeat):
            wall, peak, output, status = run(root, "test_llm.py")
            if status != 0:
                raise SystemExit(f"the Llama-3-8B generation test failed:\n{output[-4000:]}")
            runs.append((wall, peak, next(line for line in output.splitlines() if line.startswith("RESULT"))))
        _, prefill, decode, kv, *_ = runs[-1][2].split(maxsplit=4)
        print(f"Llama-3-8B, bfloat16 on meta, 2,048-token prompt, 128 new tokens: {repeat} pytest processes")
        print(
            f"\n{'prefill MACs':>20} {'decode MACs':>20} {'KV cache bytes':>15} {'= analytic':>10} "
            f"{'wall s':>7} {'peak MB':>8}"
        )
        print(
            f"{int(prefill):>20,} {int(decode):>20,} {int(kv):>15,} {'True':>10} "
            f"{statistics.median(r[0] for r in runs):>7.1f} {statistics.median(r[1] for r in runs):>8.0f}"
        )


def slower_decode() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "test_decode.py").write_text(textwrap.dedent(DECODER))
        (root / "pytest.ini").write_text("[pytest]\n")
        print("\nCachedGPT on this CPU, 128-token prompt, 32 new tokens (real timing)")
        print(f"\n{'run':<32} {'TTFT ms':>8} {'decode tok/s':>13} {'exit':>5}  verdicts")
        limit: dict[str, str] = {}
        steps = [
            ("record baseline", ("--update-budgets",), {}),
            ("unchanged", (), {}),
            ("decode step +1 ms on the host", (), {"SLOW_DECODE": "host"}),
            ("decode step twice the work", (), {"SLOW_DECODE": "work"}),
        ]
        for label, arguments, env in steps:
            report = root / "report.json"
            _, _, _, status = run(root, *arguments, f"--budget-json={report}", env={**env, **limit})
            (call,) = json.loads(report.read_text())["calls"]
            metrics = call["metrics"]
            if not limit:
                limit = {"MIN_RATE": f"{LIMIT_SHARE * metrics['decode_tokens_per_s']:.0f}"}
                label += f" (then min {limit['MIN_RATE']}/s)"
            verdicts = ", ".join(
                f"{c['metric']} {c['source']} {c['status']}" for c in call["checks"] if c["status"] != "ok"
            )
            print(
                f"{label:<32} {metrics['ttft_ms']:>8.2f} {metrics['decode_tokens_per_s']:>13.0f} "
                f"{status:>5}  "
                f"{verdicts or 'all ok'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    llama(args.repeat)
    slower_decode()


if __name__ == "__main__":
    main()
