"""``overtrain noise`` and ``overtrain finetune``: the two probes on checkpoints named on the command line.

Checkpoint arguments may be a checkpoint folder, a run folder (its newest checkpoint), or a ladder folder
(the final checkpoint of every budget), so ``overtrain noise runs/nano_ladder`` probes a whole ladder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from overtrain.atomic import atomic_write_json
from overtrain.checkpoints.discovery import expand_checkpoints
from overtrain.config import apply_overrides, build_dataclass
from overtrain.errors import OvertrainError
from overtrain.units import format_tokens


def split_paths_and_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    paths = [a for a in arguments if "=" not in a or Path(a).exists()]
    return paths, [a for a in arguments if a not in paths]


def _seed_list(value) -> list[int]:
    """``seeds=3`` means seeds 0, 1, 2; ``seeds=[4,5]`` means those."""
    return list(range(int(value))) if isinstance(value, (int, float)) else [int(v) for v in value]


def _settings(overrides: list[str], defaults: dict, allowed: set[str]) -> dict:
    settings = apply_overrides(defaults, overrides)
    unknown = set(settings) - allowed
    if unknown:
        raise OvertrainError(f"unknown setting(s) {', '.join(sorted(unknown))}", f"use {', '.join(sorted(allowed))}")
    return settings


def command_noise(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from overtrain.probes.noise import check_gamma, run_noise_probe
    from overtrain.probes.target import load_probe_target

    paths, overrides = split_paths_and_overrides(args.arguments)
    settings = _settings(overrides, {"gammas": [0.5, 1.0, 2.0], "seeds": 2, "mode": "init", "eval_tokens": 65536}, {"gammas", "seeds", "mode", "eval_tokens"})
    gammas, seeds = [float(g) for g in settings["gammas"]], _seed_list(settings["seeds"])
    for gamma in gammas:
        check_gamma(gamma)
    checkpoints = expand_checkpoints(paths)
    print(f"noise probe: {len(checkpoints)} checkpoints x {len(gammas)} gammas x {len(seeds)} seeds, mode {settings['mode']}")
    if args.dry_run:
        return 0
    records = []
    with tqdm(total=len(checkpoints) * len(gammas) * len(seeds), unit="draw") as bar:
        for folder in checkpoints:
            target = load_probe_target(folder, int(settings["eval_tokens"]), log=bar.write)
            records += run_noise_probe(target, gammas, seeds, settings["mode"], on_draw=lambda _: bar.update(1))
    print(f"\n{'tokens':>10} {'gamma':>6} {'seed':>4} {'base':>8} {'perturbed':>10} {'delta':>8}")
    for r in records:
        print(f"{format_tokens(r.tokens_seen):>10} {r.gamma:>6g} {r.seed:>4} {r.base_loss:>8.4f} {r.perturbed_loss:>10.4f} {r.delta:>+8.4f}")
    atomic_write_json(Path(args.out), [r.as_dict() for r in records])
    print(f"records: {args.out}")
    return 0


def command_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm import tqdm

    from overtrain.probes.finetune import FinetuneConfig, run_finetune_probe
    from overtrain.probes.target import load_probe_target

    paths, overrides = split_paths_and_overrides(args.arguments)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    settings = _settings(overrides, {"lrs": [1e-3], "seeds": 1, "eval_tokens": 65536}, fields | {"lrs", "seeds", "eval_tokens"})
    lrs, seeds = [float(v) for v in settings.pop("lrs")], _seed_list(settings.pop("seeds"))
    eval_tokens = int(settings.pop("eval_tokens"))
    base = build_dataclass(FinetuneConfig, settings)
    configs = [dataclasses.replace(base, lr=lr, seed=seed) for lr in lrs for seed in seeds]
    for config in configs:
        config.validate()
    checkpoints = expand_checkpoints(paths)
    print(f"fine-tuning probe: {len(checkpoints)} checkpoints x {len(lrs)} lrs x {len(seeds)} seeds on {base.task}, {base.steps} steps")
    if args.dry_run:
        return 0
    records = []
    with tqdm(total=len(checkpoints) * len(configs), unit="run") as bar:
        for folder in checkpoints:
            target = load_probe_target(folder, eval_tokens, log=bar.write)
            for config in configs:
                records.append(run_finetune_probe(target, config))
                bar.update(1)
    print(f"\n{'tokens':>10} {'lr':>8} {'seed':>4} {'ID before':>10} {'ID after':>9} {'OOD before':>11} {'OOD after':>10} {'forgetting':>11}")
    for r in records:
        print(f"{format_tokens(r.tokens_seen):>10} {r.lr:>8g} {r.seed:>4} {r.id_loss_before:>10.4f} {r.id_loss_after:>9.4f} "
              f"{r.ood_loss_before:>11.4f} {r.ood_loss_after:>10.4f} {r.forgetting:>+11.4f}")
    atomic_write_json(Path(args.out), [r.as_dict() for r in records])
    print(f"records: {args.out}")
    return 0
