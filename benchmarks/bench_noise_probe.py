"""Cost of the Gaussian probe: K noise draws of one checkpoint against K plain evaluations of the same tokens.

    python benchmarks/bench_noise_probe.py [CHECKPOINT] [--draws 8] [--eval-tokens 65536] [--threads 1]

Without a checkpoint it trains a small one first (nano preset, 1M tokens of the embedded corpus).
A draw = add init-scaled noise to every tensor, evaluate, copy the weights back from the checkpoint file.
Goal (issue 3): draws cost at most 1.5x the plain evaluations.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from overtrain.probes.noise import NoiseDraw, perturbed
from overtrain.probes.target import load_probe_target


def small_checkpoint(folder: Path) -> Path:
    from overtrain.pretrain.config import load_pretrain_config
    from overtrain.pretrain.loop import train_run

    config = load_pretrain_config(None, [f"out_dir={folder}", "model.preset=nano", "data.vocab_size=512", "train.max_tokens=1e6",
                                         "train.warmup_tokens=1e5", "train.threads=1"])
    return train_run(config, log=lambda *_: None).final_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--eval-tokens", type=int, default=65_536)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint) if args.checkpoint else small_checkpoint(Path(tempfile.mkdtemp()) / "run")
    target = load_probe_target(checkpoint, eval_tokens=args.eval_tokens, log=lambda *_: None)
    target.pretraining_loss()  # warm-up

    started = time.perf_counter()
    for _ in range(args.draws):
        target.pretraining_loss()
    plain_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for seed in range(args.draws):
        with perturbed(target.model, NoiseDraw(1.0, seed), target.info.init_std, target.weights_file) as noisy:
            target.pretraining_loss(noisy)
    noise_seconds = time.perf_counter() - started

    params = sum(p.numel() for p in target.model.parameters())
    print(f"checkpoint {checkpoint} ({params / 1e6:.2f}M parameters), {target.eval_inputs.numel():,} eval tokens, {args.threads} thread(s)")
    print(f"{args.draws} plain evaluations: {plain_seconds:.2f} s")
    print(f"{args.draws} noise draws (perturb + evaluate + restore): {noise_seconds:.2f} s")
    print(f"ratio: {noise_seconds / plain_seconds:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
