"""``overtrain sweep``, ``demo``, ``report`` and ``tasks``: whole studies, their reports, and the task list."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from overtrain.cli.arguments import refuse_a_config_file, split_config_and_overrides
from overtrain.errors import OvertrainError
from overtrain.sweep.driver import run_sweep_file


def command_sweep(args: argparse.Namespace) -> int:
    path, overrides = split_config_and_overrides(args)
    if args.out is not None:  # --out DIR, as the probe verbs take it, is the spec's out_dir
        if any(override.split("=", 1)[0] == "out_dir" for override in overrides):
            raise OvertrainError(f"--out {args.out} and an out_dir= override both name the sweep's folder", "pass one of them")
        overrides = [*overrides, f"out_dir={args.out}"]
    return run_sweep_file(path, overrides, args.dry_run)


def demo_spec_path() -> Path:
    return Path(str(resources.files("overtrain") / "recipes" / "demo.yaml"))


def command_demo(args: argparse.Namespace) -> int:
    refuse_a_config_file("demo", list(args.overrides),
                         f"the demo is the sweep in {demo_spec_path()}: run your own spec with `overtrain sweep FILE key=value ...`, "
                         "or change the demo's settings as key=value (e.g. finetune.lrs=[1e-2])")
    print(f"demo: the sweep in {demo_spec_path()} (overrides: {' '.join(args.overrides) or 'none'})")
    return run_sweep_file(str(demo_spec_path()), list(args.overrides), args.dry_run)


def command_report(args: argparse.Namespace) -> int:
    from overtrain.results.report import shown_headlines, write_report

    if not str(args.store).strip():  # an unset shell variable, say: not the current folder
        raise OvertrainError("the results store to report on is empty text", "pass a sweep folder or its results.sqlite")
    store = Path(args.store)
    if store.is_dir():
        store = store / "results.sqlite"
    report = write_report(store, Path(args.out) if args.out else store.parent / "report")
    print("\n".join(shown_headlines(report)))
    print(f"report: {report.html_path.resolve()}")
    return 0


def command_tasks(args: argparse.Namespace) -> int:
    from overtrain.tasks import list_tasks, task_info

    names = list_tasks()
    width = max(map(len, names))
    for name in names:
        info = task_info(name)
        print(f"{name:<{width}} {'(Hub or data_path)' if info.needs_network else '(offline)':<19} {info.summary}")
    return 0
