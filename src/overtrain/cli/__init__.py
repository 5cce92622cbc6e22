"""The ``overtrain`` command line: ``overtrain <verb> [CONFIG] [key=value ...] [--dry-run]``.

The CLI only parses, prints the plan, and calls the typed functions that do the work; every verb is a
function you can also call from Python. Errors a user can fix are printed as one message with the fix,
without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from overtrain.cli.arguments import add_config_arguments, path_argument
from overtrain.errors import OvertrainError

DESCRIPTION = """\
Measure catastrophic overtraining: pre-train language models to many token budgets, perturb and
fine-tune each checkpoint, and see where more pre-training starts to hurt.

Verbs take dotted key=value overrides, and most an optional YAML config first (demo and theory take
key=value settings only), e.g.
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


COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("overtrain.cli.sweep:command_demo", "run the whole study on the embedded corpus and write the report"),
    "pretrain": ("overtrain.cli.pretrain:command_pretrain", "train one model to a token budget (resumes a killed run)"),
    "pretrain-ladder": ("overtrain.cli.pretrain:command_pretrain_ladder", "train one run per token budget, or WSD decay branches"),
    "noise": ("overtrain.cli.probes:command_noise", "Gaussian probe: loss after init-scaled noise, per checkpoint"),
    "finetune": ("overtrain.cli.probes:command_finetune", "fine-tuning probe: ID gain and forgetting, per checkpoint and LR"),
    "sharpness": ("overtrain.cli.probes:command_sharpness", "sharpness probes: top Hessian eigenvalue, Hessian trace, worst-case perturbation"),
    "sweep": ("overtrain.cli.sweep:command_sweep", "expand a sweep spec into jobs, run the missing ones, write the report"),
    "report": ("overtrain.cli.sweep:command_report", "figures, HTML and markdown from a results store"),
    "tasks": ("overtrain.cli.sweep:command_tasks", "list the fine-tuning tasks"),
    "alpaca-export": ("overtrain.cli.instruct:command_alpaca_export", "answer the 805 AlpacaEval instructions and write alpaca_eval's model_outputs JSON"),
    "bench": ("overtrain.cli.bench:command_bench", "benchmark suite (lm-evaluation-harness): accuracy and gold log-likelihood per byte, per checkpoint"),
    "family": ("overtrain.cli.family:command_family", "list a checkpoint family's revisions with step, tokens and commit, and flag duplicate weights"),
    "theory": ("overtrain.cli.theory:command_theory", "simulate the two-layer linear model of catastrophic overtraining"),
}
"""Verb -> (``module:function`` run for it, one-line summary). Verb modules are imported only when used,
so ``overtrain --help`` stays fast and a verb module never imports this one."""


def _run_verb(args: argparse.Namespace) -> int:
    module_name, _, function_name = COMMANDS[args.verb][0].partition(":")
    return getattr(importlib.import_module(module_name), function_name)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overtrain", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from overtrain import __version__

    parser.add_argument("--version", action="version", version=f"overtrain {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in ("pretrain", "pretrain-ladder"):
        summary = COMMANDS[name][1]
        sub = verbs.add_parser(name, help=summary, add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_lazy_help(sub, lambda summary=summary: summary + ".\n\n" + pretrain_help())
        add_config_arguments(sub, "YAML config (see configs/demo/); omitted: all defaults")
        sub.set_defaults(function=_run_verb)
    _add_probe_parsers(verbs)
    theory = verbs.add_parser("theory", help=COMMANDS["theory"][1], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lazy_help(theory, theory_help)
    theory.add_argument("overrides", nargs="*", metavar="key=value", help="settings of the simulator, e.g. network.hidden_dim=32 (an unknown key lists them all)")
    theory.add_argument("--out", type=path_argument, default="runs/theory", help="folder for figures and numbers (default runs/theory)")
    theory.add_argument("--dry-run", action="store_true", help="print the resolved settings only")
    theory.set_defaults(function=_run_verb)
    return parser


PROBE_USAGE = {
    "noise": """\
Adds Gaussian noise to every tensor (none to norm gains), measures the held-out pre-training loss, and
restores the weights bitwise. Runs as a sweep into --out DIR (DIR/results.sqlite, DIR/report; run it
again to resume; `overtrain report DIR` rebuilds the report). Examples:
  overtrain noise runs/nano_ladder gammas=[1,2,4] seeds=3 --out runs/noise
  overtrain noise MODEL_FOLDER gammas=[0.01,0.03] seeds=2 mode=relative eval_data=text.txt --out runs/noise_hf""",
    "finetune": """\
Fine-tunes each checkpoint (weights restored after each run) and stores ID task loss/accuracy and OOD
forgetting (pre-training loss after minus before), one job per task x lr x seed x reg_lambda. Runs as a
sweep into --out DIR, like `overtrain noise`. Examples:
  overtrain finetune runs/nano_ladder task=kjv-to-web lrs=[1e-3,3e-3] steps=100 seeds=2
  overtrain finetune runs/nano_ladder task=file:my_data.jsonl lr=1e-3 --out runs/ft_mine
  torchrun --nproc_per_node 8 -m overtrain finetune CKPT task=hh-rlhf lr=1e-5 distributed=fsdp gradient_checkpointing=true --out DIR
    (one run over 8 GPUs; rank 0 stores; --dry-run estimates GPU memory and time: docs/scale.md)""",
    "sharpness": """\
Measures the curvature of the held-out pre-training loss at each checkpoint (weights restored bitwise):
the top Hessian eigenvalue (Lanczos), the Hessian trace (Hutchinson), and the worst-case loss increase on
the sphere whose radius is the Gaussian probe's draw at each gamma; per tensor group on request. A
Hessian-vector product costs ~11 forward passes, hence the small default eval_tokens. Runs as a sweep
into --out DIR, like `overtrain noise`. Examples:
  overtrain sharpness runs/nano_ladder kinds=[hessian_top,worst_case] gammas=[1,2] --out runs/sharpness
  overtrain sharpness runs/nano_ladder kind=hessian_trace probes=32 groups=[all,attention,mlp] --out runs/trace""",
}


class _LazyHelp(argparse.Action):
    """``-h``: builds the description only when asked (it imports the settings classes, and with them torch)."""

    def __init__(self, option_strings, dest, describe, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help message and exit")
        self.describe = describe

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.description = self.describe()
        parser.print_help()
        parser.exit()


def add_lazy_help(parser: argparse.ArgumentParser, describe) -> None:
    parser.add_argument("-h", "--help", action=_LazyHelp, describe=describe)


def theory_help() -> str:
    """The theory verb's description and every simulator setting, generated from :class:`TheoryConfig`."""
    from overtrain.cli.help import keys_help
    from overtrain.theory.config import TheoryConfig

    return f"{COMMANDS['theory'][1]}: every experiment of docs/theory.md, with figures. Settings:\n\n{keys_help(TheoryConfig)}"


def probe_help(name: str) -> str:
    """A probe verb's description: its usage and every key, generated from the settings dataclasses."""
    from overtrain.cli.help import keys_help
    from overtrain.sweep.config import ExecutorConfig, FinetuneSweep, NoiseSweep, SharpnessSweep

    section = {"noise": NoiseSweep, "finetune": FinetuneSweep, "sharpness": SharpnessSweep}[name]
    return (f"{PROBE_USAGE[name]}\n\nsettings (key=value):\n{keys_help(section)}\n\n"
            f"sweep settings:\n{keys_help(ExecutorConfig, 'executor.')}\n  report=true\n      write DIR/report when done")


def sweep_help() -> str:
    from overtrain.cli.help import keys_help
    from overtrain.sweep.config import SweepConfig

    return SWEEP_HELP + "\n\nkeys (section.key=value):\n" + keys_help(SweepConfig, expand=("noise", "finetune", "sharpness", "benchmarks", "family", "multimodal", "executor"))


def _add_probe_parsers(verbs) -> None:
    for name in ("noise", "finetune", "sharpness"):
        sub = verbs.add_parser(name, help=COMMANDS[name][1], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_lazy_help(sub, lambda name=name: COMMANDS[name][1] + ".\n\n" + probe_help(name))
        sub.add_argument("arguments", nargs="+", metavar="CHECKPOINT|key=value", help="checkpoint, run or ladder folders, then settings")
        sub.add_argument("--out", type=path_argument, default=f"runs/{name}", help=f"folder of the store (results.sqlite) and the report (default runs/{name})")
        sub.add_argument("--dry-run", action="store_true", help="print the plan and validate every setting; run nothing")
        sub.set_defaults(function=_run_verb)
    sweep = verbs.add_parser("sweep", help=COMMANDS["sweep"][1], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lazy_help(sweep, lambda: COMMANDS["sweep"][1] + ".\n\n" + sweep_help())
    add_config_arguments(sweep, "sweep spec YAML (see configs/)")
    sweep.add_argument("--out", type=path_argument, metavar="DIR", help="the sweep's folder (its out_dir setting): runs, DIR/results.sqlite and DIR/report")
    sweep.set_defaults(function=_run_verb)
    demo = verbs.add_parser("demo", help=COMMANDS["demo"][1], description=COMMANDS["demo"][1] + ".\n\n" + DEMO_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo sweep, e.g. out_dir=runs/demo2")
    demo.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate only")
    demo.set_defaults(function=_run_verb)
    from overtrain.cli.report import REPORT_HELP, TASKS_HELP

    report = verbs.add_parser("report", help=COMMANDS["report"][1], description=COMMANDS["report"][1] + ".\n\n" + REPORT_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("store", help="results.sqlite of a sweep, or the sweep's out_dir")
    report.add_argument("--out", type=path_argument, default=None, help="folder for the report (default: next to the store)")
    report.set_defaults(function=_run_verb)
    tasks = verbs.add_parser("tasks", help=COMMANDS["tasks"][1], description=COMMANDS["tasks"][1] + ".\n\n" + TASKS_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks.set_defaults(function=_run_verb)
    from overtrain.cli.family import FAMILY_HELP, FAMILY_SUMMARY, add_family_arguments

    family = verbs.add_parser("family", help=COMMANDS["family"][1], description=FAMILY_SUMMARY + ".\n\n" + FAMILY_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_family_arguments(family)
    family.set_defaults(function=_run_verb)
    from overtrain.cli.bench import add_bench_arguments, bench_help

    bench = verbs.add_parser("bench", help=COMMANDS["bench"][1], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lazy_help(bench, lambda: COMMANDS["bench"][1] + ".\n\n" + bench_help())
    add_bench_arguments(bench)
    bench.set_defaults(function=_run_verb)
    from overtrain.cli.instruct import add_alpaca_export_parser

    add_alpaca_export_parser(verbs, _run_verb)


SWEEP_HELP = """\
A sweep spec is a YAML of the keys below (see configs/demo/sweep_small.yaml); any key can be overridden
on the command line (noise.gammas=[1,2]). Every setting of every job is checked before anything runs.
Jobs already in out_dir/results.sqlite are skipped: re-running resumes a killed sweep.
Lists: seeds=N means N seeds (0..N-1) everywhere, seeds=[4,7] those seeds; lr=X means lrs=[X]."""

DEMO_HELP = """\
Pre-trains a ladder of token budgets of a small model on the embedded corpus, runs the noise probe and
fine-tuning at three fixed LRs on the offline python-code task, and writes runs/demo/report/report.html.
Resumes if killed; --dry-run prints the plan and an estimate of its time here."""


def pretrain_help() -> str:
    """The pre-training verbs' keys, generated from PretrainConfig and its sections' docstrings."""
    from overtrain.cli.help import keys_help
    from overtrain.pretrain.config import PretrainConfig

    return ("config keys (each settable as section.key=value):\n" + keys_help(PretrainConfig)
            + "\n\nData-parallel: torchrun --nproc_per_node N -m overtrain pretrain CONFIG (same global batch).")


POSITIONAL_LISTS = ("overrides", "arguments", "settings")
"""The names under which the verbs collect their key=value (and checkpoint) arguments."""


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with options anywhere: ``overtrain pretrain CONFIG --dry-run out_dir=X`` puts ``out_dir=X``
    after the option, where argparse alone would stop (it fills a verb's positional list only once)."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    positional = next((name for name in POSITIONAL_LISTS if isinstance(getattr(args, name, None), list)), None)
    if positional is None or any(item.startswith("-") for item in extras):
        # argparse's message for what it cannot place, with the verb's usage (the root parser would show its own)
        _verb_parser(parser, getattr(args, "verb", None)).error(f"unrecognized arguments: {' '.join(extras)}")
    getattr(args, positional).extend(extras)
    return args


def _verb_parser(parser: argparse.ArgumentParser, verb: str | None) -> argparse.ArgumentParser:
    """The sub-parser of ``verb`` (``overtrain tasks``'s own), or ``parser`` itself when there is none."""
    for action in parser._actions:  # argparse keeps its sub-parsers in the action that adds them
        if isinstance(action, argparse._SubParsersAction) and verb in action.choices:
            return action.choices[verb]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    try:
        return args.function(args)
    except OvertrainError as error:
        print(f"error: {error.problem}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {error.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue: a run resumes from its newest checkpoint, a sweep "
              "or probe runs only the jobs its store does not hold yet", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
