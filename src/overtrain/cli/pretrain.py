"""``overtrain pretrain`` and ``overtrain pretrain-ladder``: one run to a token budget, or a ladder of them."""

from __future__ import annotations

import argparse

from overtrain.cli.arguments import split_config_and_overrides
from overtrain.errors import OvertrainError


def command_pretrain(args: argparse.Namespace) -> int:
    from overtrain.config import dump_yaml
    from overtrain.pretrain.config import load_pretrain_config
    from overtrain.pretrain.loop import describe_compile, describe_moved_checkpoints, train_run

    path, overrides = split_config_and_overrides(args)
    config = load_pretrain_config(path, overrides)
    if config.ladder.budgets_tokens and not args.dry_run:
        raise OvertrainError("this config has ladder.budgets_tokens", "run it with `overtrain pretrain-ladder`")
    print(dump_yaml(config))
    if args.dry_run:  # of a ladder config too: it shows the tokenization plan, and says which verb runs it
        _refuse_what_the_run_would_refuse(config)
        train = config.train
        if config.ladder.budgets_tokens:
            print("this config has ladder.budgets_tokens: run it with `overtrain pretrain-ladder` (its --dry-run lists the runs)")
        else:
            print(f"plan: {train.total_steps:,} steps of {train.tokens_per_step:,} tokens into {config.out_dir}, "
                  f"{describe_compile(train)}")
            moved = describe_moved_checkpoints(train)
            if moved:
                print(moved)
        print(_token_plan(config))
        return 0
    result = train_run(config)
    print(f"done: {result.tokens_seen:,} tokens, held-out loss {result.final_heldout_loss:.4f}, checkpoint {result.final_checkpoint}")
    return 0


def command_pretrain_ladder(args: argparse.Namespace) -> int:
    from overtrain.config import dump_yaml
    from overtrain.pretrain.config import load_pretrain_config, refuse_unused_max_tokens, refuse_unused_schedule
    from overtrain.pretrain.ladder import describe_ladder, plan_ladder, run_ladder
    from overtrain.pretrain.loop import COMPILE_MIN_STEPS

    path, overrides = split_config_and_overrides(args)
    config = load_pretrain_config(path, overrides)
    refuse_unused_max_tokens(config.ladder.budgets_tokens, config.train.max_tokens, overrides)
    refuse_unused_schedule(config.ladder.mode, config.train.schedule, overrides)
    rungs = plan_ladder(config)
    print(dump_yaml(config))
    print(f"ladder ({config.ladder.mode}), {len(rungs)} runs (train.compile={str(config.train.compile).lower()}: "
          f"'auto' compiles runs of {COMPILE_MIN_STEPS}+ steps):\n{describe_ladder(rungs)}")
    if args.dry_run:
        _refuse_what_every_run_would_refuse(config)
        print(_token_plan(config))
        return 0
    results = run_ladder(config)
    print("\nbudget (tokens)   held-out loss   checkpoint")
    for result in results:
        print(f"{result.tokens_seen:>15,}   {result.final_heldout_loss:>13.4f}   {result.final_checkpoint}")
    return 0



def _refuse_what_every_run_would_refuse(config) -> None:
    """What a run (or each run of a ladder) refuses before it computes anything: device=cuda without a GPU, an
    out_dir that cannot be written (a file, say), and a corpus or tokenizer path that does not exist (or a
    tokenizer folder without tokenizer files)."""
    from pathlib import Path

    from overtrain.atomic import ensure_writable_folder
    from overtrain.data.corpus import is_local_source, require_local_source
    from overtrain.data.tokenizer import require_local_tokenizer
    from overtrain.pretrain.loop import resolve_device

    resolve_device(config.device)
    ensure_writable_folder(Path(config.out_dir), "the run folder", "out_dir")  # creates nothing (a probe file, removed)
    ensure_writable_folder(Path(config.data.cache_dir), "the token cache", "data.cache_dir")
    if is_local_source(str(config.data.corpus)):
        require_local_source(str(config.data.corpus))
    require_local_tokenizer(str(config.data.tokenizer))


def _refuse_what_the_run_would_refuse(config) -> None:
    """The dry run's share of the run's own checks: those of every run (above), and a run folder bound to other
    settings (read only: nothing is written). Prints the note of a ``train.extend`` extension."""
    from pathlib import Path

    from overtrain.pretrain.loop import check_run_settings, newest_checkpoint, refuse_milestones_already_passed

    _refuse_what_every_run_would_refuse(config)
    out_dir = Path(config.out_dir)
    newest = newest_checkpoint(out_dir, hash_files=False) if out_dir.is_dir() else None  # the run resumes from it
    _, note = check_run_settings(out_dir, config, newest)
    refuse_milestones_already_passed(config, out_dir, newest)
    if note:
        print(f"the run would say: {note}")


def _token_plan(config) -> str:
    """The tokenization the run (or the ladder's largest budget) needs."""
    from overtrain.data.tokenize_parallel import describe_token_plan
    from overtrain.data.tokens import train_tokens_needed
    from overtrain.pretrain.ladder import plan_ladder

    configs = [rung.config for rung in plan_ladder(config)] if config.ladder.budgets_tokens else [config]
    needed = max(train_tokens_needed(c.train.total_steps, c.train.batch_size, c.train.seq_len) for c in configs)
    return describe_token_plan(config.data, needed)
