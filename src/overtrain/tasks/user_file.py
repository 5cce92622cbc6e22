"""``task=file:PATH``: fine-tune on your own JSONL file, one record per line, in any of three formats.

- ``{"prompt": "...", "completion": "..."}``: the loss is on the completion only;
- ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (chat): the loss is on
  the assistant turns only. The conversation is rendered with the checkpoint's chat template when its
  tokenizer has one (``chat_template`` in tokenizer_config.json, or chat_template.jinja), else with the
  plain template :data:`PLAIN_CHAT_TEMPLATE` (``User: ...`` / ``Assistant: ...`` lines);
- ``{"text": "..."}``: plain text, the loss is on every token.

A file may mix formats (each record is read on its own; other keys are ignored). The held-out split is
fixed by a hash of each record (its canonical JSON), never by the file's order or the seed: records whose
hash falls below :data:`HELDOUT_FRACTION` (and, when that picks none, the one with the smallest hash).
Identical records land in the same split. Unlike the built-in tasks, no record is dropped for its length:
sequences longer than ``max_len`` tokens are cut from the left.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from overtrain.errors import OvertrainError
from overtrain.tasks.records import LoadOptions, TaskExample, TaskSplits, require_non_empty, shuffled, stable_fraction, take

FILE_PREFIX = "file:"
HELDOUT_FRACTION = 0.1
ROLES = ("system", "user", "assistant")
PLAIN_CHAT_TEMPLATE = "{Role}: {content}\n"
"""How a chat turn is rendered without a chat template (``Role`` capitalized); the loss covers an
assistant turn's ``{content}\\n``."""
FORMATS_HELP = ('one JSON object per line: {"prompt": ..., "completion": ...}, '
                '{"messages": [{"role": ..., "content": ...}, ...]} or {"text": ...}')


def task_file_path(task: str) -> Path:
    """``file:data/my.jsonl`` -> Path("data/my.jsonl") (``~`` expanded)."""
    return Path(task[len(FILE_PREFIX):]).expanduser()


def check_task_file(task: str) -> Path:
    """The file of a ``file:PATH`` task; an error when it is missing, a folder, or empty."""
    path = task_file_path(task)
    if not str(task)[len(FILE_PREFIX):]:
        raise OvertrainError(f"task {task!r} names no file", "write task=file:PATH, e.g. task=file:data/train.jsonl")
    if not path.exists():
        raise OvertrainError(f"task file {path} does not exist", f"pass task=file:PATH naming a JSONL file ({FORMATS_HELP})")
    if not path.is_file():
        raise OvertrainError(f"task file {path} is not a file", f"pass task=file:PATH naming a JSONL file ({FORMATS_HELP})")
    return path


def load_file_task(task: str, options: LoadOptions) -> TaskSplits:
    """Read every record of the file, split them by hash, shuffle train by ``options.seed``."""
    path = check_task_file(task)
    keyed = sorted(_read_records(path), key=lambda item: item[0])  # hash order: independent of the file's order
    if not keyed:
        raise OvertrainError(f"task file {path} holds no records", f"write {FORMATS_HELP}")
    heldout_pool = [example for fraction, example in keyed if fraction < HELDOUT_FRACTION]
    train_pool = [example for fraction, example in keyed if fraction >= HELDOUT_FRACTION]
    if not heldout_pool and len(train_pool) > 1:
        heldout_pool, train_pool = train_pool[:1], train_pool[1:]
    splits = TaskSplits(
        name=task,
        train=take(shuffled(train_pool, options.seed), options.max_train),
        heldout=take(heldout_pool, options.max_heldout),
        description=f"{len(keyed)} records of {path}; held out by a hash of each record ({HELDOUT_FRACTION:.0%})",
        source=str(path),
    )
    require_non_empty(splits, options)
    return splits


def _read_records(path: Path) -> list[tuple[float, TaskExample]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise OvertrainError(f"task file {path} is not UTF-8 text (byte {error.start})", f"write {FORMATS_HELP}") from None
    except OSError as error:
        raise OvertrainError(f"task file {path} cannot be read ({error.strerror or error})", "check its permissions") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise OvertrainError(f"task file {path}, line {number}: not valid JSON ({error.msg})", f"write {FORMATS_HELP}") from None
        example = record_to_example(record, f"task file {path}, line {number}")
        records.append((stable_fraction(json.dumps(record, sort_keys=True, ensure_ascii=False)), example))
    return records


def record_to_example(record: Any, where: str) -> TaskExample:
    """One JSON record in any of the three formats as a :class:`TaskExample`."""
    if not isinstance(record, dict):
        raise OvertrainError(f"{where}: a record must be a JSON object, got {type(record).__name__}", f"write {FORMATS_HELP}")
    if "prompt" in record and "completion" in record:
        return TaskExample(_text(record, "prompt", where), _text(record, "completion", where))
    if "messages" in record:
        return _chat_example(record["messages"], where)
    if "text" in record:
        return TaskExample("", _text(record, "text", where))
    raise OvertrainError(f"{where}: unknown record format with keys {sorted(record)}", f"write {FORMATS_HELP}")


def _text(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise OvertrainError(f"{where}: {key!r} must be a string, got {type(value).__name__}", f"write {FORMATS_HELP}")
    return value


def _chat_example(messages: Any, where: str) -> TaskExample:
    if not isinstance(messages, list) or not messages:
        raise OvertrainError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects", f"write {FORMATS_HELP}")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise OvertrainError(f"{where}: message {index} must be {{\"role\": {'|'.join(ROLES)}, \"content\": \"...\"}}, got {message!r}",
                                 f"write {FORMATS_HELP}")
        turns.append((message["role"], message["content"]))
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last is None:
        raise OvertrainError(f"{where}: the conversation has no assistant turn to train on", "add an assistant message")
    prompt = "".join(render_plain_turn(role, content) for role, content in turns[:last]) + plain_turn_header("assistant")
    return TaskExample(prompt, turns[last][1] + "\n", messages=tuple(turns))


def plain_turn_header(role: str) -> str:
    """The untrained start of a turn in the plain template, e.g. ``"Assistant: "``."""
    return PLAIN_CHAT_TEMPLATE.split("{content}")[0].format(Role=role.capitalize())


def render_plain_turn(role: str, content: str) -> str:
    return PLAIN_CHAT_TEMPLATE.format(Role=role.capitalize(), content=content)
