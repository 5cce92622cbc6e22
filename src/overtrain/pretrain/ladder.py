"""Pre-training entry points: one run, or a ladder of runs over token budgets.

The paper's protocol (``ladder.mode: cosine-per-budget``) trains each budget as its own run, its
learning rate annealed to zero at its end, so no checkpoint is caught mid-schedule. The cheaper
``wsd-branches`` mode trains one warmup-stable-decay run to the largest budget, writing a checkpoint where
each smaller budget's decay would start, and then branches a short decay off each of them. Since the WSD
learning rate before the decay does not depend on the budget, and batches depend only on (seed, step),
each branch is exactly the run that budget would have been on its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from overtrain.checkpoints.discovery import checkpoint_at_tokens
from overtrain.errors import OvertrainError
from overtrain.pretrain.config import PretrainConfig
from overtrain.pretrain.loop import RunResult, train_run
from overtrain.pretrain.schedules import wsd_branch_start_tokens
from overtrain.units import format_tokens


@dataclass(frozen=True)
class LadderRung:
    """One budget of a ladder: its own config and, for WSD branches, the checkpoint it starts from."""

    budget_tokens: int
    config: PretrainConfig
    branch_from_tokens: int | None = None


def budget_run_name(budget_tokens: int) -> str:
    return f"budget-{budget_tokens:012d}"


def plan_ladder(config: PretrainConfig) -> list[LadderRung]:
    """The runs a ladder config expands to, smallest budget first."""
    budgets = sorted(set(config.ladder.budgets_tokens))
    if not budgets:
        raise OvertrainError("ladder.budgets_tokens is empty", "list token budgets, e.g. ladder.budgets_tokens=[1e6,2e6,4e6]")
    if config.ladder.mode == "cosine-per-budget":
        return [LadderRung(budget, _rung_config(config, budget, config.train.schedule)) for budget in budgets]
    return _plan_wsd_ladder(config, budgets)


def _rung_config(config: PretrainConfig, budget: int, schedule: str, out_dir: str | None = None) -> PretrainConfig:
    rung = copy.deepcopy(config)
    rung.train.max_tokens = budget
    rung.train.schedule = schedule  # type: ignore[assignment]
    rung.out_dir = out_dir or str(Path(config.out_dir) / budget_run_name(budget))
    rung.ladder.budgets_tokens = []
    return rung


def _plan_wsd_ladder(config: PretrainConfig, budgets: list[int]) -> list[LadderRung]:
    largest = budgets[-1]
    trunk = _rung_config(config, largest, "wsd", str(Path(config.out_dir) / budget_run_name(largest)))
    branch_points = [wsd_branch_start_tokens(budget, trunk.train) for budget in budgets[:-1]]
    trunk.train.checkpoint_at_tokens = sorted(set(trunk.train.checkpoint_at_tokens) | set(branch_points))
    rungs = [LadderRung(largest, trunk)]
    for budget, start in zip(budgets[:-1], branch_points):
        rungs.append(LadderRung(budget, _rung_config(config, budget, "wsd"), branch_from_tokens=start))
    return rungs


def describe_ladder(rungs: list[LadderRung]) -> str:
    """One line per run: budget, steps, schedule, whether it compiles (as the run decides it, alone in its
    process: torchrun's data-parallel runs compile the module only) and its folder."""
    from overtrain.pretrain.loop import should_compile

    lines = []
    for rung in rungs:
        how = f"decay branch from {format_tokens(rung.branch_from_tokens)}" if rung.branch_from_tokens is not None else rung.config.train.schedule
        compiled = "compiled" if should_compile(rung.config.train, 1) else "eager"
        lines.append(f"  {format_tokens(rung.budget_tokens):>7} tokens  {rung.config.train.total_steps:>7,} steps  {how:<28} "
                     f"{compiled:<8} -> {rung.config.out_dir}")
    return "\n".join(lines)


def run_ladder(config: PretrainConfig, log=print) -> list[RunResult]:
    """Train every rung (finished rungs are resumed at their end, i.e. skipped); results smallest first."""
    rungs = plan_ladder(config)
    trunk_dir = Path(rungs[0].config.out_dir)
    results = []
    for index, rung in enumerate(rungs):
        log(f"ladder rung {index + 1}/{len(rungs)}: {format_tokens(rung.budget_tokens)} tokens")
        init_from = None
        if rung.branch_from_tokens is not None:
            init_from = _checkpoint_at(trunk_dir, rung.branch_from_tokens)
        results.append(train_run(rung.config, init_from=init_from, log=log))
    return sorted(results, key=lambda result: result.tokens_seen)


def _checkpoint_at(run_dir: Path, tokens: int) -> Path:
    folder = checkpoint_at_tokens(run_dir, tokens)
    if folder is None:
        raise OvertrainError(f"the WSD trunk {run_dir} has no checkpoint at {tokens:,} tokens", "re-run the ladder; the trunk writes it")
    return folder
