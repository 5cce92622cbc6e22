"""Training throughput: overtrain's loop against a plain transformers training loop, in one run.

    python benchmarks/bench_train_throughput.py [--d-model 256] [--layers 4] [--steps 20] [--threads 2]

Both sides train the same Llama shape on the same random token batches, with the same AdamW, batch and
dtype. The baseline is what a user writes with transformers: ``LlamaForCausalLM`` (eager attention, as
in a plain loop), ``model(input_ids, labels=...)``, ``loss.backward()``, ``optimizer.step()``.
Also printed: the peak matmul rate of this machine measured in the same run (a large square product in
the same dtype), and each side's model FLOP/s as a fraction of it.
"""

from __future__ import annotations

import argparse
import time

import torch

from overtrain.checkpoints.folder import hf_llama_config
from overtrain.model.config import ModelConfig
from overtrain.model.llama import build_model, estimate_flops_per_token
from overtrain.precision import autocast_context, resolve_dtype


def matmul_peak_flops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square product in ``dtype``; in fp32 the faster of torch.mm's BLAS and oneDNN (MKL takes its
    AVX2 path on AMD CPUs, where oneDNN runs about twice as fast: the BLAS alone would understate the peak)."""
    from overtrain.model.cpu_linear import products_by_library

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=torch_dtype), torch.randn(size, size, dtype=torch_dtype)
    rates = []
    for product in products_by_library(a, b).values():
        product()
        started = time.perf_counter()
        for _ in range(repeats):
            product()
        rates.append(2 * size**3 * repeats / (time.perf_counter() - started))
    return max(rates)


def time_steps(step, batches, warmup: int) -> float:
    for inputs, targets in batches[:warmup]:
        step(inputs, targets)
    started = time.perf_counter()
    for inputs, targets in batches[warmup:]:
        step(inputs, targets)
    return time.perf_counter() - started


def overtrain_step_fn(model, dtype: str, compiled: bool):
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(inputs, targets):
        with autocast_context("cpu", dtype):
            logits = forward(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def transformers_step_fn(model, dtype: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(inputs, targets):
        with autocast_context("cpu", dtype):
            loss = model(input_ids=inputs, labels=inputs).loss  # transformers shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    from transformers import LlamaForCausalLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, "cpu")
    config = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps + args.warmup):
        block = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=generator)
        batches.append((block[:, :-1], block[:, 1:]))
    tokens = args.steps * args.batch * args.seq_len
    flops_per_token = estimate_flops_per_token(config, args.vocab, args.seq_len)

    peak = matmul_peak_flops(dtype)
    results = {}
    ours, _ = build_model(config, args.vocab, args.seq_len, seed=0)
    results["overtrain (eager)"] = time_steps(overtrain_step_fn(ours, dtype, compiled=False), batches, args.warmup)
    ours, _ = build_model(config, args.vocab, args.seq_len, seed=0)
    results["overtrain (torch.compile)"] = time_steps(overtrain_step_fn(ours, dtype, compiled=True), batches, args.warmup)
    theirs = LlamaForCausalLM(hf_llama_config(ours, end_of_text_id=0))
    theirs.config._attn_implementation = "eager"
    results["transformers loop (eager attention)"] = time_steps(transformers_step_fn(theirs, dtype), batches, args.warmup)

    baseline = tokens / results["transformers loop (eager attention)"]
    print(f"model d_model={args.d_model} layers={args.layers} vocab={args.vocab}; batch {args.batch} x {args.seq_len}; "
          f"dtype {dtype}; {args.threads} threads; {ours.num_parameters() / 1e6:.2f}M parameters")
    print(f"matmul peak ({dtype}, 2048^2) measured now: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'loop':<38}{'tokens/s':>10}{'vs transformers':>17}{'% of peak':>11}")
    for name, seconds in results.items():
        rate = tokens / seconds
        print(f"{name:<38}{rate:>10.0f}{rate / baseline:>16.2f}x{100 * rate * flops_per_token / peak:>10.1f}%")


if __name__ == "__main__":
    main()
