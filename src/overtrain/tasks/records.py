"""The record format every fine-tuning task shares, and the split rules the task loaders reuse.

A task is two tuples of :class:`TaskExample`: ``train`` and ``heldout``. An example is a ``prompt``
(context, no loss on it) and a ``completion`` (the tokens the loss and the metrics are computed on).
Classification and multiple-choice tasks also carry every candidate completion in ``choices`` and the
index of the right one in ``label``, so accuracy can be scored by comparing the candidates' losses.

Split rules (the same for every task, so numbers are comparable across checkpoints):

- the held-out split is fixed by the data (an official split, or a hash of a stable key), never by
  the seed; ``max_heldout`` keeps a prefix of its fixed order;
- the seed only shuffles (or, for generated data, generates) the train split; ``max_train`` keeps a
  prefix of the shuffled order;
- examples whose prompt plus completion exceed ``max_chars`` characters are dropped (768 characters
  by default: about 220 tokens of a 4k byte-level BPE, so they fit 256-token sequences).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from overtrain.errors import OvertrainError

DEFAULT_MAX_CHARS = 768
TASK_DATA_DIR = Path(__file__).resolve().parent.parent / "task_data"


@dataclass(frozen=True)
class TaskExample:
    """One fine-tuning example: the model reads ``prompt`` and is trained/scored on ``completion``."""

    prompt: str
    """Text the model conditions on; no loss on its tokens."""
    completion: str
    """Target text; the loss (and, with ``choices``, the accuracy) is on these tokens only."""
    choices: tuple[str, ...] | None = None
    """For classification / multiple choice: every candidate completion (the right one included)."""
    label: int | None = None
    """Index of the correct completion in ``choices``."""
    messages: tuple[tuple[str, str], ...] | None = None
    """For chat data: every ``(role, content)`` turn; the loss is on the assistant turns only (``prompt`` and
    ``completion`` then hold the plain rendering up to and of the last assistant turn)."""

    @property
    def text(self) -> str:
        """Prompt and completion as one string, as a language model sees them."""
        return self.prompt + self.completion


@dataclass(frozen=True)
class TaskSplits:
    """A named task's train and held-out examples, with what they are and how they were split."""

    name: str
    train: tuple[TaskExample, ...]
    heldout: tuple[TaskExample, ...]
    description: str
    """One line: the source and the split rule."""
    source: str = ""
    """Where the examples came from: a Hub name, a file, a folder, a package."""

    @property
    def has_choices(self) -> bool:
        """True when the examples are classification / multiple choice (accuracy is defined)."""
        return any(example.choices is not None for example in self.heldout)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Read-outs this task supports: ``loss`` always, ``accuracy`` when examples have choices."""
        return ("loss", "accuracy") if self.has_choices else ("loss",)


@dataclass(frozen=True)
class LoadOptions:
    """The user's knobs for one :func:`overtrain.tasks.load_task` call, validated."""

    seed: int = 0
    max_train: int | None = None
    max_heldout: int | None = None
    data_path: Path | None = None
    max_chars: int = DEFAULT_MAX_CHARS


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone (sha256), for splits that never depend on a seed."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout_key(key: str, heldout_fraction: float) -> bool:
    """Whether the item identified by ``key`` belongs to the held-out split (hash rule)."""
    return stable_fraction(key) < heldout_fraction


def fits(example: TaskExample, max_chars: int) -> bool:
    """Whether the example (prompt + completion) is at most ``max_chars`` characters long."""
    return len(example.prompt) + len(example.completion) <= max_chars


def shuffled(items: Sequence[TaskExample], seed: int) -> list[TaskExample]:
    """A copy of ``items`` in an order fixed by ``seed``."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def interleave_by_label(examples: Iterable[TaskExample]) -> list[TaskExample]:
    """Round-robin over labels (keeping each label's order), so any prefix is close to balanced."""
    by_label: dict[int | None, list[TaskExample]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    queues = [by_label[label] for label in sorted(by_label, key=lambda label: -1 if label is None else label)]
    result: list[TaskExample] = []
    for position in range(max((len(queue) for queue in queues), default=0)):
        result.extend(queue[position] for queue in queues if position < len(queue))
    return result


def without_overlap(train: Iterable[TaskExample], heldout: Sequence[TaskExample], by_prompt: bool = True) -> list[TaskExample]:
    """Train examples whose prompt (or, with ``by_prompt=False``, whole text) is not also held out."""
    key = (lambda example: example.prompt) if by_prompt else (lambda example: example.text)
    heldout_keys = {key(example) for example in heldout}
    return [example for example in train if key(example) not in heldout_keys]


def take(examples: Sequence[TaskExample], limit: int | None) -> tuple[TaskExample, ...]:
    """The first ``limit`` examples (all of them when ``limit`` is None)."""
    return tuple(examples if limit is None else examples[:limit])


def make_splits(
    name: str,
    description: str,
    source: str,
    train_pool: Sequence[TaskExample],
    heldout_pool: Sequence[TaskExample],
    options: LoadOptions,
    overlap_by_prompt: bool = True,
) -> TaskSplits:
    """Apply the shared rules: length filter, seeded train shuffle, fixed held-out prefix, no overlap.

    ``heldout_pool`` must already be in its fixed order; ``train_pool`` in any deterministic order.
    A train example whose prompt is also a held-out prompt is dropped (its whole text, with
    ``overlap_by_prompt=False``, for tasks whose prompts repeat by design, like file paths).
    """
    heldout = take([example for example in heldout_pool if fits(example, options.max_chars)], options.max_heldout)
    train_fitting = without_overlap((e for e in train_pool if fits(e, options.max_chars)), heldout, overlap_by_prompt)
    train = take(shuffled(train_fitting, options.seed), options.max_train)
    splits = TaskSplits(name=name, train=train, heldout=heldout, description=description, source=source)
    require_non_empty(splits, options)
    return splits


def require_non_empty(splits: TaskSplits, options: LoadOptions) -> None:
    """Raise an :class:`OvertrainError` naming the split and the source when a split has no examples."""
    for split_name, examples in (("train", splits.train), ("held-out", splits.heldout)):
        if examples:
            continue
        raise OvertrainError(
            f"task {splits.name!r}: the {split_name} split is empty (source: {splits.source or 'built in'}; "
            f"max_chars={options.max_chars}).",
            "check that the source has enough rows for this split in the documented schema (docs/tasks.md: a file of "
            "very few rows can leave a split empty); from Python, load_task's max_chars drops longer examples: raise it "
            "if every example was longer than it.",
        )


def task_data_file(file_name: str, rebuild_hint: str = "python scripts/build_task_data.py") -> Path:
    """Path of a prepared file shipped in ``overtrain/task_data``; a clear error when it is missing."""
    path = TASK_DATA_DIR / file_name
    if not path.is_file():
        raise OvertrainError(
            f"the prepared task data file {path} is missing.",
            f"reinstall overtrain (the wheel ships it) or rebuild it with `{rebuild_hint}`, "
            "or pass data_path= pointing at your own copy.",
        )
    return path


def require_existing_path(path: Path, task_name: str, what: str) -> Path:
    """Return ``path`` if it exists, else raise an error saying which task wanted what."""
    if not path.exists():
        raise OvertrainError(
            f"task {task_name!r}: data_path {path} does not exist.",
            f"pass data_path= pointing at {what}.",
        )
    return path
