"""``overtrain noise``, ``overtrain finetune`` and ``overtrain sharpness``: one probe on the checkpoints named on the command line,
run as a small sweep into a store.

``overtrain noise CHECKPOINT... [key=value ...] --out DIR`` is the sweep ``{out_dir: DIR, checkpoints:
[CHECKPOINT...], noise: {key: value}}``: the same jobs, job keys, rows and progress bar as ``overtrain
sweep``, stored in DIR/results.sqlite (resumable: run it again and only missing jobs run), with the
report in DIR/report; ``overtrain report DIR`` rebuilds it. A checkpoint argument may be a checkpoint
folder, a run folder (its newest checkpoint), or a ladder folder (the final checkpoint of every budget).
Settings are the probe section's keys (``gammas=[1,2]``, ``lrs=[1e-3]``); ``executor.KEY=VALUE`` and
``report=false`` set the sweep's own keys.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from overtrain.config import parse_override
from overtrain.errors import OvertrainError
from overtrain.units import format_tokens

SWEEP_KEYS = ("executor", "report")
"""Top-level sweep keys the probe verbs accept as they are; every other key belongs to the probe."""


def split_paths_and_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Arguments with '=' are settings unless they name an existing path."""
    paths = [a for a in arguments if "=" not in a or Path(a).exists()]
    return paths, [a for a in arguments if a not in paths]


def probe_overrides(probe: str, references: list[str], settings: list[str], out_dir: str) -> list[str]:
    """The sweep overrides a probe verb stands for: out_dir, the checkpoints, and ``probe.KEY=VALUE``."""
    overrides = [f"out_dir={json.dumps(out_dir)}", f"checkpoints={json.dumps(references)}", f"{probe}={{}}"]
    for text in settings:
        keys, _ = parse_override(text)
        if keys[0] in SWEEP_KEYS:
            overrides.append(text)
        elif keys[0] == probe and len(keys) > 1:
            overrides.append(text)
        else:
            overrides.append(f"{probe}.{text.strip()}")
    return overrides


@contextlib.contextmanager
def keys_as_typed(section: str, settings: list[str] = ()) -> Iterator[None]:
    """Errors raised inside name the probe section's keys as the verb's user typed them (``limit``, not
    ``benchmarks.limit``): the verb is a sweep with one section, and its checks name the sweep's keys.
    ``settings``: the verb's key=value arguments, whose keys are taken off too when the section has no such
    key (``foo.bar=1`` is refused as ``foo``, not as ``noise.foo``)."""
    typed = [keys[0] for keys, _ in map(parse_override, settings) if keys[0] not in (section, *SWEEP_KEYS)]
    keys = [*_section_keys(section), *typed]
    try:
        yield
    except OvertrainError as error:
        raise OvertrainError(_without_section(error.problem, section, keys), error.fix and _without_section(error.fix, section, keys)) from None


def _without_section(text: str, section: str, keys: list[str]) -> str:
    """``text`` with ``SECTION.`` taken off the section's ``keys`` (``noise.gammas``, ``noise.gammas.x``);
    other text that starts the same way (a file ``noise.txt``, a path ``runs/noise.gammas``) is left alone."""
    alternatives = "|".join(sorted(map(re.escape, keys), key=len, reverse=True))
    return re.sub(rf"(?<![\w./\\-]){re.escape(section)}\.(?=(?:{alternatives})(?!\w))", "", text)


def _section_keys(section: str) -> list[str]:
    """The keys of the sweep section ``section`` (a field of SweepConfig holding a dataclass, or None), and the
    singular of each of its axes (``lr`` for ``lrs``: what a job's own check names, and what a user may type)."""
    import dataclasses
    import typing

    from overtrain.sweep.config import SECTION_AXES, SweepConfig

    hint = typing.get_type_hints(SweepConfig)[section]
    section_class = next(option for option in typing.get_args(hint) if dataclasses.is_dataclass(option))
    return [field.name for field in dataclasses.fields(section_class)] + list(SECTION_AXES.get(section, {}))


def check_out_dir(out: str) -> str:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OvertrainError(f"--out {out} is a file", "--out names a folder (it will hold results.sqlite and report/), e.g. --out runs/noise")
    return out


def run_probe_verb(probe: str, args: argparse.Namespace) -> int:
    """Run one probe verb as a sweep through the sweep driver; print the rows it stored."""
    from overtrain.sweep.config import load_sweep_config
    from overtrain.sweep.driver import run_sweep_file
    from overtrain.sweep.plan import plan_jobs

    references, settings = split_paths_and_overrides(args.arguments)
    if not references:
        raise OvertrainError(f"`overtrain {probe}` names no checkpoint", f"pass checkpoint, run or ladder folders first, e.g. overtrain {probe} runs/nano_ladder")
    overrides = probe_overrides(probe, references, settings, check_out_dir(args.out))
    with keys_as_typed(probe, settings):
        code = run_sweep_file(None, overrides, args.dry_run)
    from overtrain.sweep.torchrun import is_follower

    if not args.dry_run and not is_follower():  # under torchrun only rank 0 has the store
        config = load_sweep_config(None, overrides)
        print_rows(probe, config.store_path, {job.key for job in plan_jobs(config)})
    return code


def print_rows(probe: str, store_path: Path, keys: set[str]) -> None:
    """The stored rows of this invocation's jobs, one line per noise draw or fine-tuning run."""
    from overtrain.results.store import ResultStore

    if not store_path.is_file():
        return
    with ResultStore(store_path) as store:
        rows = [row for row in store.rows(kind=probe) if row.key in keys]
    if not rows:  # every job failed: the failures were printed, a table header alone would say nothing
        return
    lines = {"noise": _noise_lines, "finetune": _finetune_lines, "sharpness": _sharpness_lines}[probe](rows)
    print("\n".join(lines))


def _where(row) -> str:
    tokens = row.metrics.get("tokens_seen")
    return format_tokens(tokens) if tokens else Path(str(row.spec["checkpoint"])).name


def _noise_lines(rows) -> list[str]:
    lines = [f"\n{'checkpoint':>12} {'gamma':>6} {'seed':>4} {'base':>8} {'perturbed':>10} {'delta':>8}"]
    for row in sorted(rows, key=lambda row: (row.metrics.get("tokens_seen") or 0, row.spec["checkpoint"])):
        for draw in row.metrics["draws"]:
            lines.append(f"{_where(row):>12} {draw['gamma']:>6g} {draw['seed']:>4} {row.metrics['base_loss']:>8.4f} "
                         f"{draw['perturbed_loss']:>10.4f} {draw['delta']:>+8.4f}")
    return lines


def _finetune_lines(rows) -> list[str]:
    tasks = [_task_label(row.metrics["task"]) for row in rows]
    width = max([14, *map(len, tasks)])  # the whole task name, never cut
    lines = [f"\n{'checkpoint':>12} {'task':>{width}} {'lr':>8} {'seed':>4} {'ID before':>10} {'ID after':>9} "
             f"{'OOD before':>11} {'OOD after':>10} {'forgetting':>11}"]
    for row in sorted(rows, key=lambda row: (row.metrics.get("tokens_seen") or 0, row.spec["checkpoint"], row.metrics["lr"])):
        m = row.metrics
        lines.append(f"{_where(row):>12} {_task_label(m['task']):>{width}} {m['lr']:>8g} {m['seed']:>4} {m['id_loss_before']:>10.4f} "
                     f"{m['id_loss_after']:>9.4f} {m['ood_loss_before']:>11.4f} {m['ood_loss_after']:>10.4f} {m['forgetting']:>+11.4f}")
    return lines


def _task_label(task: str) -> str:
    """A task's name, or ``file:NAME`` for the user's own file (its folder is in the store)."""
    return "file:" + Path(task.removeprefix("file:")).name if task.startswith("file:") else task


def _sharpness_lines(rows) -> list[str]:
    lines = [f"\n{'checkpoint':>12} {'kind':>13} {'group':>10} {'gamma':>6} {'seed':>4} {'value':>11} {'+-':>9} {'passes':>6}"]
    for row in sorted(rows, key=lambda row: (row.metrics.get("tokens_seen") or 0, row.spec["checkpoint"])):
        for r in row.metrics["records"]:
            gamma = f"{r['gamma']:g}" if r.get("gamma") is not None else "-"
            stderr = f"{r['stderr']:.3g}" if r.get("stderr") is not None else ""
            note = " (not converged)" if r.get("converged") is False else ""
            lines.append(f"{_where(row):>12} {r['kind']:>13} {str(r['group'])[-10:]:>10} {gamma:>6} {r['seed']:>4} {r['value']:>11.5g} "
                         f"{stderr:>9} {r['passes']:>6}{note}")
    return lines


def command_noise(args: argparse.Namespace) -> int:
    return run_probe_verb("noise", args)


def command_finetune(args: argparse.Namespace) -> int:
    return run_probe_verb("finetune", args)


def command_sharpness(args: argparse.Namespace) -> int:
    return run_probe_verb("sharpness", args)
