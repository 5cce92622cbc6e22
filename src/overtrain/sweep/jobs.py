"""The job functions a sweep runs: ``fn(spec) -> JobOutput``, importable by name in any worker.

They receive paths and numbers only (never model objects), load what they need, and return JSON
metrics; the driver stores them. Pre-training jobs resume from their own checkpoints when re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overtrain.config import build_dataclass
from overtrain.pretrain.config import PretrainConfig
from overtrain.probes.finetune import FinetuneConfig
from overtrain.results.records import JobOutput, job_key


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    return None


def _checkpoint_provenance(folder: Path) -> dict[str, Any]:
    from overtrain.checkpoints.folder import read_checkpoint_info

    info = read_checkpoint_info(folder)
    return {"checkpoint": str(folder), "checkpoint_sha256": info.checksums.get("model.safetensors"), "tokens_seen": info.tokens_seen}


def weight_norm(weights_file: Path) -> float:
    """L2 norm of the weight matrices in a safetensors file: the tensors weight decay pulls toward zero.

    Norm gains (1-D, never decayed) are left out: they grow while the decayed matrices shrink, and their
    sum would hide the turn of the matrices' norm that goes with the inflections. A tied embedding is
    stored, and counted, once.
    """
    from safetensors import safe_open

    total = 0.0
    with safe_open(str(weights_file), framework="pt") as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            if tensor.dim() >= 2:
                total += float(tensor.double().pow(2).sum())
    return total**0.5


def run_pretrain_job(spec: Mapping[str, Any]) -> JobOutput:
    from overtrain.pretrain.loop import train_run

    config = build_dataclass(PretrainConfig, dict(spec["config"]))
    branch_from = Path(spec["branch_from"]) if spec.get("branch_from") else None
    result = train_run(config, init_from=branch_from, log=_quiet, stop_at_tokens=spec.get("stop_at_tokens"), show_progress=False)
    metrics = {
        "tokens_seen": result.tokens_seen,
        "budget_tokens": config.train.max_tokens,
        "trunk_segment": spec.get("stop_at_tokens") is not None,
        "final_heldout_loss": result.final_heldout_loss,
        "tokens_per_second": result.tokens_per_second,
        "train_seconds": result.seconds,
        "weight_norm": weight_norm(result.final_checkpoint / "model.safetensors"),
        "factors": dict(spec.get("factors", {})),
    }
    return JobOutput(metrics, {"checkpoint": str(result.final_checkpoint)}, _checkpoint_provenance(result.final_checkpoint))


def load_target_of(spec: Mapping[str, Any]):
    """The probe target a job names: its checkpoint reference, eval_tokens and (when set) eval_data and the field
    of its records that holds the text."""
    from overtrain.probes.target import load_probe_target

    extra = {"eval_data": spec["eval_data"]} if spec.get("eval_data") else {}
    if spec.get("eval_text_field"):
        extra["text_field"] = spec["eval_text_field"]
    return load_probe_target(str(spec["checkpoint"]), eval_tokens=int(spec["eval_tokens"]), log=_quiet, **extra)


def target_provenance(target: Any, reference: str) -> dict[str, Any]:
    """Who the probed model is: its identity (path or repo@revision with commit sha, weights hash), so two
    revisions of one model never share a row; our checkpoints' recorded sha256 as before. Also what the
    pre-training loss was measured on: the text and the tokens actually evaluated (``eval_tokens`` asks for
    a number; a held-out split or text shorter than that gives fewer, and the row says how many)."""
    identity = dict(getattr(target, "identity", None) or {})
    evaluated = _evaluated_text(target)
    if not identity:
        return _checkpoint_provenance(target.info.folder) | evaluated
    return {"checkpoint": reference, "checkpoint_identity": identity, "checkpoint_sha256": identity.get("weights_sha256"),
            "tokens_seen": identity.get("tokens_seen")} | evaluated


def _evaluated_text(target: Any) -> dict[str, Any]:
    targets = getattr(target, "eval_targets", None)
    if targets is None:
        return {}
    return {"eval_source": getattr(target, "eval_source", None), "eval_tokens_measured": int(targets.numel())}


def run_noise_job(spec: Mapping[str, Any]) -> JobOutput:
    from overtrain.probes.noise import run_noise_probe

    target = load_target_of(spec)
    records = run_noise_probe(target, list(spec["gammas"]), list(spec["seeds"]), mode=spec["mode"])
    metrics = {
        "tokens_seen": tokens_seen_of(target, spec),
        "base_loss": records[0].base_loss if records else target.pretraining_loss().loss,
        "draws": [{"gamma": r.gamma, "seed": r.seed, "perturbed_loss": r.perturbed_loss, "delta": r.delta} for r in records],
        "factors": dict(spec.get("factors", {})),
        **run_settings_of(target),
    }
    return JobOutput(metrics, {}, target_provenance(target, spec["checkpoint"]))


def run_finetune_job(spec: Mapping[str, Any]) -> JobOutput:
    from overtrain.probes.finetune import run_finetune_probe

    target = load_target_of(spec)
    record = run_finetune_probe(target, finetune_config_of(dict(spec)))
    metrics = {**record.as_dict(), "tokens_seen": tokens_seen_of(target, spec), "factors": dict(spec.get("factors", {})),
               **run_settings_of(target)}
    return JobOutput(metrics, {}, target_provenance(target, spec["checkpoint"]))


def run_settings_of(target: Any) -> dict[str, Any]:
    """``{"run_settings": ...}``: the settings fixed within the pre-training run of one of our checkpoints (its
    seed, model and data), from which the report tells the checkpoints of different runs apart
    (:func:`overtrain.results.analysis.run_factor_columns`); nothing for a model overtrain did not train."""
    from overtrain.checkpoints.folder import CheckpointInfo
    from overtrain.pretrain.binding import fixed_settings

    return {"run_settings": fixed_settings(target.info.run_config)} if isinstance(target.info, CheckpointInfo) else {}


def tokens_seen_of(target: Any, spec: Mapping[str, Any]) -> int | None:
    """The model's pre-training tokens: its own record, else what a family listing put in the spec."""
    return target.tokens_seen if target.tokens_seen is not None else spec.get("tokens_seen")


def finetune_config_of(spec: dict[str, Any]) -> FinetuneConfig:
    """The run's settings from a job spec (fields a spec leaves out take FinetuneConfig's defaults)."""
    return build_dataclass(FinetuneConfig, dict(spec["finetune"]), "finetune.")


def run_benchmark_job(spec: Mapping[str, Any]) -> JobOutput:
    """The benchmark suite on one checkpoint as it is: accuracy and the continuous read-outs per benchmark."""
    from overtrain.probes.benchmarks import benchmark_average, load_benchmark_model, score_benchmarks

    loaded = load_benchmark_model(str(spec["checkpoint"]))
    scores = score_benchmarks(loaded.model, loaded.tokenizer, list(spec["tasks"]), limit=spec.get("limit"),
                              batch_size=int(spec.get("batch_size", 8)), num_fewshot=int(spec.get("num_fewshot", 0)),
                              max_length=spec.get("max_length"))
    metrics = {
        "tokens_seen": loaded.tokens_seen if loaded.tokens_seen is not None else spec.get("tokens_seen"),
        "benchmarks": scores,
        "average": benchmark_average(scores),
        "factors": dict(spec.get("factors", {})),
    }
    return JobOutput(metrics, {}, loaded.provenance)


def run_sharpness_job(spec: Mapping[str, Any]) -> JobOutput:
    """The requested sharpness read-outs of one checkpoint (``kinds`` x ``groups`` x seeds, worst_case x gammas)."""
    from overtrain.probes.sharpness import run_sharpness_probe

    target = load_target_of(spec)
    options = {name: spec[name] for name in ("probes", "tol", "max_iters", "steps", "worst_tol", "batch_size") if name in spec}
    records = run_sharpness_probe(target, list(spec["kinds"]), gammas=list(spec.get("gammas", [])), seeds=list(spec["seeds"]),
                                  groups=spec.get("groups"), **options)
    metrics = {
        "tokens_seen": target.tokens_seen,
        "base_loss": target.pretraining_loss().loss,
        "records": [record.as_dict() for record in records],
        "factors": dict(spec.get("factors", {})),
        **run_settings_of(target),
    }
    return JobOutput(metrics, {}, target_provenance(target, spec["checkpoint"]))


def run_vision_features_job(spec: Mapping[str, Any]) -> JobOutput:
    """Encode every image of a ``multimodal:`` section once with the frozen encoder, into the feature cache."""
    from overtrain.multimodal.tuning import features_for

    return JobOutput(features_for(dict(spec)), {}, {})


def run_multimodal_job(spec: Mapping[str, Any]) -> JobOutput:
    """LLaVA-style tuning of one checkpoint (stage 1, stage 2) and its ID/OOD read-outs."""
    from overtrain.multimodal.tuning import MultimodalConfig, run_multimodal_probe

    config = build_dataclass(MultimodalConfig, dict(spec["multimodal"]), "multimodal.")
    if config.save_dir:  # every job of the grid its own folder: one shared folder kept only the last job's model
        config.save_dir = str(Path(config.save_dir) / f"{Path(str(spec['checkpoint'])).name}-lr{config.lr:g}-seed{config.seed}-"
                                                      f"{job_key('multimodal', spec)}")
    target = load_target_of(spec)
    record = run_multimodal_probe(target, config)
    artifacts = {"vision_language_model": config.save_dir} if config.save_dir else {}
    return JobOutput({**record.as_dict(), "factors": dict(spec.get("factors", {}))}, artifacts, target_provenance(target, spec["checkpoint"]))
