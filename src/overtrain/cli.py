"""The ``overtrain`` command line: ``overtrain <verb> [CONFIG] [key=value ...] [--dry-run]``.

The CLI only parses, prints the plan, and calls the typed functions that do the work; every verb is a
function you can also call from Python. Errors a user can fix are printed as one message with the fix,
without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from overtrain.errors import OvertrainError

DESCRIPTION = """\
Measure catastrophic overtraining: pre-train language models to many token budgets, perturb and
fine-tune each checkpoint, and see where more pre-training starts to hurt.

Every verb takes an optional YAML config and dotted overrides, e.g.
  overtrain pretrain configs/demo/nano.yaml train.lr=1e-3 train.max_tokens=4e6
  overtrain pretrain-ladder configs/demo/nano.yaml ladder.budgets_tokens=[1e6,2e6,4e6] --dry-run
Durations are in tokens (1e6 and 1_000_000 both work). --dry-run prints the resolved config and plan.
"""

EPILOG = """\
examples:
  overtrain pretrain configs/demo/nano.yaml                 train one run to its token budget
  overtrain pretrain-ladder configs/demo/nano_ladder.yaml   one cosine-to-zero run per budget
  overtrain theory finetune.lrs=[0.03]                      the two-layer linear model, with figures
A killed run resumes where it stopped: run the same command again.
"""


def _add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan; train nothing")


def _split_config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse cannot tell ``CONFIG`` from a first ``key=value``; an argument with '=' is an override."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return config, overrides


def command_pretrain(args: argparse.Namespace) -> int:
    from overtrain.config import dump_yaml
    from overtrain.pretrain import load_pretrain_config
    from overtrain.train import train_run

    path, overrides = _split_config_and_overrides(args)
    config = load_pretrain_config(path, overrides)
    if config.ladder.budgets_tokens:
        raise OvertrainError("this config has ladder.budgets_tokens", "run it with `overtrain pretrain-ladder`")
    print(dump_yaml(config))
    if args.dry_run:
        train = config.train
        print(f"plan: {train.total_steps:,} steps of {train.tokens_per_step:,} tokens into {config.out_dir}")
        return 0
    result = train_run(config)
    print(f"done: {result.tokens_seen:,} tokens, held-out loss {result.final_heldout_loss:.4f}, checkpoint {result.final_checkpoint}")
    return 0


def command_pretrain_ladder(args: argparse.Namespace) -> int:
    from overtrain.config import dump_yaml
    from overtrain.pretrain import describe_ladder, load_pretrain_config, plan_ladder, run_ladder

    path, overrides = _split_config_and_overrides(args)
    config = load_pretrain_config(path, overrides)
    rungs = plan_ladder(config)
    print(dump_yaml(config))
    print(f"ladder ({config.ladder.mode}), {len(rungs)} runs:\n{describe_ladder(rungs)}")
    if args.dry_run:
        return 0
    results = run_ladder(config)
    print("\nbudget (tokens)   held-out loss   checkpoint")
    for result in results:
        print(f"{result.tokens_seen:>15,}   {result.final_heldout_loss:>13.4f}   {result.final_checkpoint}")
    return 0


def command_theory(args: argparse.Namespace) -> int:
    from overtrain.theory.cli import run_theory_cli

    return run_theory_cli(list(args.overrides), Path(args.out), dry_run=args.dry_run)


def _probe_commands():
    from overtrain import cli_probes

    return cli_probes


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "demo": (lambda args: _probe_commands().command_demo(args), "run the whole study on the embedded corpus and write the report"),
    "pretrain": (command_pretrain, "train one model to a token budget (resumes a killed run)"),
    "pretrain-ladder": (command_pretrain_ladder, "train one run per token budget, or WSD decay branches"),
    "noise": (lambda args: _probe_commands().command_noise(args), "Gaussian probe: loss after init-scaled noise, per checkpoint"),
    "finetune": (lambda args: _probe_commands().command_finetune(args), "fine-tuning probe: ID gain and forgetting, per checkpoint and LR"),
    "sweep": (lambda args: _probe_commands().command_sweep(args), "expand a sweep spec into jobs, run the missing ones, write the report"),
    "report": (lambda args: _probe_commands().command_report(args), "figures, HTML and markdown from a results store"),
    "tasks": (lambda args: _probe_commands().command_tasks(args), "list the fine-tuning tasks"),
    "theory": (command_theory, "simulate the two-layer linear model of catastrophic overtraining"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overtrain", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from overtrain import __version__

    parser.add_argument("--version", action="version", version=f"overtrain {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in ("pretrain", "pretrain-ladder"):
        function, summary = COMMANDS[name]
        sub = verbs.add_parser(name, help=summary, description=summary + ".\n\n" + CONFIG_KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_config_arguments(sub, "YAML config (see configs/demo/); omitted: all defaults")
        sub.set_defaults(function=function)
    _add_probe_parsers(verbs)
    theory = verbs.add_parser("theory", help=COMMANDS["theory"][1], description=COMMANDS["theory"][1])
    theory.add_argument("overrides", nargs="*", metavar="key=value", help="settings of the simulator, e.g. network.hidden_dim=32 (an unknown key lists them all)")
    theory.add_argument("--out", default="runs/theory", help="folder for figures and numbers (default runs/theory)")
    theory.add_argument("--dry-run", action="store_true", help="print the resolved settings only")
    theory.set_defaults(function=command_theory)
    return parser


NOISE_HELP = """\
Adds N(0, (gamma * init_std)^2) noise to every tensor (none to norm gains), measures the held-out
pre-training loss, and restores the weights bitwise. Settings: gammas=[0.5,1,2] seeds=2 (or [0,1])
mode=init|relative|absolute eval_tokens=65536. Example:
  overtrain noise runs/nano_ladder gammas=[1,2,4] seeds=3"""

FINETUNE_HELP = """\
Fine-tunes each checkpoint (weights restored after each run) and reports ID task loss/accuracy and
OOD forgetting (pre-training loss after minus before). Settings: task=NAME (see `overtrain tasks`)
lrs=[1e-4,1e-3] seeds=2 steps=100 batch_size=16 reg_lambda=0 warmup_fraction=0.1 schedule=cosine
max_train=2000 max_heldout=200 max_len=256 data_path=DIR eval_tokens=65536. Example:
  overtrain finetune runs/nano_ladder task=kjv-to-web lrs=[1e-3,3e-3] steps=100"""


def _add_probe_parsers(verbs) -> None:
    for name, text in (("noise", NOISE_HELP), ("finetune", FINETUNE_HELP)):
        sub = verbs.add_parser(name, help=COMMANDS[name][1], description=COMMANDS[name][1] + ".\n\n" + text,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("arguments", nargs="+", metavar="CHECKPOINT|key=value", help="checkpoint, run or ladder folders, then settings")
        sub.add_argument("--out", default=f"runs/{name}_records.json", help="where to write the JSON records")
        sub.add_argument("--dry-run", action="store_true", help="print the plan only")
        sub.set_defaults(function=COMMANDS[name][0])
    sweep = verbs.add_parser("sweep", help=COMMANDS["sweep"][1], description=COMMANDS["sweep"][1] + ".\n\n" + SWEEP_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_arguments(sweep, "sweep spec YAML (see configs/)")
    sweep.set_defaults(function=COMMANDS["sweep"][0])
    demo = verbs.add_parser("demo", help=COMMANDS["demo"][1], description=COMMANDS["demo"][1] + ".\n\n" + DEMO_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo sweep, e.g. out_dir=runs/demo2")
    demo.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate only")
    demo.set_defaults(function=COMMANDS["demo"][0])
    report = verbs.add_parser("report", help=COMMANDS["report"][1])
    report.add_argument("store", help="results.sqlite of a sweep, or the sweep's out_dir")
    report.add_argument("--out", default=None, help="folder for the report (default: next to the store)")
    report.set_defaults(function=COMMANDS["report"][0])
    tasks = verbs.add_parser("tasks", help=COMMANDS["tasks"][1])
    tasks.set_defaults(function=COMMANDS["tasks"][0])


SWEEP_HELP = """\
A sweep spec has: out_dir, pretrain (a pretrain-ladder config), checkpoints (existing folders), noise
(gammas, seeds, mode, eval_tokens), finetune (tasks, lrs, seeds, reg_lambdas, steps, batch_size, ...),
executor (kind: in-process|processes|ray, workers, threads_per_worker, ray_address), report.
Jobs already in out_dir/results.sqlite are skipped: re-running resumes a killed sweep."""

DEMO_HELP = """\
Pre-trains a ladder of token budgets of a small model on the embedded corpus, runs the noise probe and
fixed-LR fine-tuning on two offline tasks, and writes runs/demo/report/report.html. Resumes if killed."""


CONFIG_KEYS_HELP = """\
config sections (each key settable as section.key=value):
  model.*   preset (nano, tiny, small, base-cpu, olmo-15m/20m/30m/60m/90m), d_model, n_layers, n_heads,
            n_kv_heads, d_ff, tie_embeddings, init_std, init_std_overrides
  data.*    corpus (embedded | path to .txt/.jsonl/folder | hf:allenai/c4:en), vocab_size,
            heldout_fraction, max_documents, cache_dir
  train.*   max_tokens, batch_size, seq_len, grad_accum, lr, warmup_tokens, schedule
            (cosine|linear|constant|wsd), decay_fraction, min_lr_ratio, weight_decay, grad_clip,
            dtype (bf16|fp32), compile, seed, eval_every_tokens, eval_tokens,
            checkpoint_every_tokens, checkpoint_at_tokens, threads
  ladder.*  budgets_tokens, mode (cosine-per-budget | wsd-branches)
  out_dir, device (auto|cpu|cuda)
Data-parallel: torchrun --nproc_per_node N -m overtrain pretrain CONFIG (same global batch)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.function(args)
    except OvertrainError as error:
        print(f"error: {error.problem}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {error.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
