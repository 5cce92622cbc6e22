"""``overtrain theory [key=value ...] [--out DIR] [--dry-run]``: run every theory experiment.

The command line is the signature of :func:`run_theory_cli`: dotted overrides of :class:`TheoryConfig`
(``pretrain.step=0.05``, ``finetune.lrs=[0.01,0.03]``), values read as YAML.
"""

from __future__ import annotations

import argparse
import difflib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from overtrain.atomic import atomic_write_json, ensure_writable_folder
from overtrain.cli.arguments import refuse_a_config_file
from overtrain.config import apply_overrides, build_dataclass, config_to_dict, parse_override
from overtrain.errors import OvertrainError
from overtrain.theory.config import TheoryConfig, field_paths, validate_theory_config
from overtrain.theory.experiments import run_all
from overtrain.theory.figures import write_figures
from overtrain.theory.report import results_to_dict, summary_table
from overtrain.theory.sweeps import pretrain_times


def load_theory_config(overrides: list[str]) -> TheoryConfig:
    """Defaults plus dotted ``key=value`` overrides, checked key by key and value by value."""
    allowed = field_paths()
    sections = {path.rsplit(".", 1)[0] for path in allowed if "." in path}
    for text in overrides:
        keys, _ = parse_override(text)
        dotted = ".".join(keys)
        if dotted not in allowed and dotted not in sections:
            close = difflib.get_close_matches(dotted, allowed, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise OvertrainError(f"unknown theory setting {dotted!r}", f"{hint}allowed keys: {', '.join(allowed)}")
    config = build_dataclass(TheoryConfig, apply_overrides({}, overrides))
    return validate_theory_config(config)


def describe_plan(config: TheoryConfig) -> str:
    """What a run will compute, in numbers (printed first, and alone by --dry-run)."""
    times = pretrain_times(config)
    pretrain, finetune = config.pretrain, config.finetune
    seeds = config.target.data_seeds if config.target.samples else 1
    pairs = len(set([(rate, 0.0) for rate in finetune.lrs] + [(finetune.lambda_lr, value) for value in finetune.lambdas]))
    recipes = len(set(finetune.replay_fractions) | {0.0}) + len(set(finetune.probe_steps) - {0})
    return (
        f"pre-training: {len(times)} times T from {times[0]:g} to {times[-1]:g}; "
        f"{round(times[-1] / pretrain.step):,} {pretrain.method} steps of {pretrain.step:g} (and again at {pretrain.step / 2:g})\n"
        f"noise: {len(config.noise.stds)} stds x {config.noise.draws} draws; fine-tuning: {pairs} (rate, lambda) pairs x "
        f"{len(times)} T x {seeds} data seed(s) = {pairs * len(times) * seeds} networks, {finetune.steps} steps each\n"
        f"remedies at rate {finetune.remedy_lr:g}: {recipes} replay/LP-FT runs x {len(times)} T x {seeds} data seed(s), "
        f"{len(finetune.wise_alphas)} WiSE-FT alphas (no training)"
    )


def run_theory_cli(overrides: list[str], out_dir: Path, dry_run: bool = False) -> int:
    """Parse overrides, run all theory experiments, write figures + theory.json into out_dir, print a
    summary table; with ``dry_run`` print the resolved settings and the plan only. Returns 0."""
    refuse_a_config_file("theory", overrides, "give its settings as key=value (overtrain theory --help lists them), e.g. finetune.lrs=[0.03]")
    config = load_theory_config(overrides)
    ensure_writable_folder(Path(out_dir), "the theory output folder", "--out")  # before minutes of simulation, also in --dry-run
    print(describe_plan(config), flush=True)
    if dry_run:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None), end="")
        return 0
    started = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # a divergence is refused below, in words, not as numpy's warnings
        results = run_all(config)
    seconds = time.perf_counter() - started
    out_dir = Path(out_dir)
    written = results_to_dict(results, seconds)
    _refuse_non_finite(written)  # before any figure: a diverged simulation writes nothing
    figures = write_figures(results, out_dir)
    atomic_write_json(out_dir / "theory.json", written)
    print(summary_table(results))
    print(f"computed in {seconds:.1f} s; wrote {len(figures)} figures and theory.json to {out_dir}")
    return 0


def _refuse_non_finite(written: dict[str, object]) -> None:
    """Refuse results that hold an infinite or NaN number: gradient descent on the linear model diverged (a
    step or rate too large for the sizes and times asked for), and its curves would be drawn as if it had not."""
    bad = list(_non_finite_paths(written["sweeps"], "sweeps")) + list(_non_finite_paths(written["pretrain_loss"], "pretrain_loss"))
    if bad:
        raise OvertrainError(
            f"the simulation diverged: {len(bad)} results are not finite numbers (first: {', '.join(bad[:3])})",
            "lower the step sizes and rates (pretrain.step, finetune.lrs, finetune.lambda_lr, finetune.remedy_lr; a larger "
            "pretrain.spectrum_top needs a smaller step), or pretrain.time_max; the defaults are stable",
        )


def _non_finite_paths(value: object, path: str, in_curve: bool = False) -> Iterator[str]:
    """Paths (``sweeps.lr.loss[3]``) of the infinite or NaN numbers of the curves (lists) in a JSON-like tree.
    Single statistics may be NaN by design (an inflection's standard error where there is no U), so only
    curve points count."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_paths(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _non_finite_paths(item, f"{path}[{index}]", in_curve=True)
    elif in_curve and isinstance(value, float) and not math.isfinite(value):
        yield path


def command_theory(args: argparse.Namespace) -> int:
    return run_theory_cli(list(args.overrides), Path(args.out), dry_run=args.dry_run)
