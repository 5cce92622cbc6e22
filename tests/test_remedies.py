"""Fine-tuning remedies (replay, LP-FT, WiSE-FT) on a real tiny checkpoint: each is off by default, and each
does exactly what it says at its end points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_pretrain_config, write_stdlib_text_corpus
from safetensors.torch import load_file

from overtrain.errors import OvertrainError
from overtrain.pretrain.loop import train_run
from overtrain.probes.finetune import (
    EncodedTask,
    FinetuneConfig,
    finetune_in_place,
    output_layer_parameters,
    replay_text_of,
    run_finetune_probe,
    set_interpolated_weights,
    snapshot_weights,
)
from overtrain.probes.target import load_probe_target

BASE = dict(task="wordnet-class", lr=3e-3, steps=6, batch_size=8, max_train=100, max_heldout=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remedies")
    corpus = write_stdlib_text_corpus(root / "corpus")
    config = tiny_pretrain_config(root, corpus, "train.max_tokens=16384", "train.dtype=fp32")
    return train_run(config, log=lambda *_: None).final_checkpoint


@pytest.fixture(scope="module")
def target(checkpoint: Path):
    return load_probe_target(checkpoint, eval_tokens=1024, dtype="fp32", log=lambda *_: None)


@pytest.fixture(scope="module")
def task(target):
    return EncodedTask(target, FinetuneConfig(**BASE))  # the same examples for every remedy (same task, seed, sizes)


@pytest.fixture(scope="module")
def plain(target, task):
    return run_finetune_probe(target, FinetuneConfig(**BASE), task)


def _finetuned_weights(target, task, config: FinetuneConfig) -> dict[str, torch.Tensor]:
    replay = replay_text_of(target, config) if config.replay_fraction > 0 else None
    try:
        finetune_in_place(target.model, task, config, target.dtype, replay)
        return snapshot_weights(target.model)
    finally:
        target.restore()


def test_replay_fraction_zero_is_bitwise_the_plain_run(target, task, plain) -> None:
    zero = run_finetune_probe(target, FinetuneConfig(**BASE, replay_fraction=0.0), task)
    assert plain.as_dict() == zero.as_dict()  # every metric identical, not close
    assert zero.replay_tokens == 0 and zero.replay_source is None and zero.wise == []
    first, second = _finetuned_weights(target, task, FinetuneConfig(**BASE)), _finetuned_weights(target, task, FinetuneConfig(**BASE, replay_fraction=0.0))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_replay_trains_on_the_corpus_train_split_and_changes_the_run(target, task, plain) -> None:
    config = FinetuneConfig(**BASE, replay_fraction=0.25)
    replay = replay_text_of(target, config)
    assert "train split" in replay.source
    assert replay.examples(2, 0, 0, 18)[0].input_ids == replay.examples(2, 0, 0, 18)[0].input_ids  # seeded
    record = run_finetune_probe(target, config, task)
    assert record.replay_tokens > 0 and record.replay_fraction == 0.25
    assert record.train_tokens < plain.train_tokens  # 2 of 8 rows per step are replay rows
    assert record.ood_loss_after != plain.ood_loss_after


def test_linear_probe_phase_changes_only_the_output_layer(target, task, checkpoint: Path) -> None:
    original = load_file(checkpoint / "model.safetensors")
    config = FinetuneConfig(**{**BASE, "steps": 2}, linear_probe_steps=5)
    output = {id(p) for p in output_layer_parameters(target.model)}
    output_names = {name for name, p in target.model.named_parameters() if id(p) in output}
    assert output_names  # lm_head, or the tied embedding matrix
    # phase 1 alone (the probe phase as finetune_in_place runs it), then the whole LP-FT run
    from overtrain.probes.finetune import PROBE_STREAM, TrainedTokens, _train_phase, only_trainable

    try:
        with only_trainable(target.model, output_layer_parameters(target.model)):
            _train_phase(target.model, output_layer_parameters(target.model), task, config, "fp32", None, 5, PROBE_STREAM, TrainedTokens(), "output-layer")
        after = dict(target.model.named_parameters())
        for name, p in after.items():
            if name in output_names:
                assert not torch.equal(p, original[name]), name
            else:
                assert torch.equal(p, original[name]), name
        assert all(p.requires_grad for p in target.model.parameters())  # flags restored
    finally:
        target.restore()
    record = run_finetune_probe(target, config, task)
    assert record.linear_probe_steps == 5 and record.id_loss_after < record.id_loss_before
    assert all(torch.equal(p, original[name]) for name, p in target.model.named_parameters())


def test_wise_alpha_zero_and_one_are_exactly_the_endpoints(target, task, checkpoint: Path) -> None:
    original = load_file(checkpoint / "model.safetensors")
    config = FinetuneConfig(**BASE, wise_alphas=[0.0, 0.5, 1.0])
    record = run_finetune_probe(target, config, task)
    by_alpha = {entry.alpha: entry for entry in record.wise}
    assert by_alpha[0.0].id_loss == record.id_loss_before and by_alpha[0.0].ood_loss == record.ood_loss_before
    assert by_alpha[0.0].forgetting == 0.0
    assert by_alpha[1.0].id_loss == record.id_loss_after and by_alpha[1.0].ood_loss == record.ood_loss_after
    assert by_alpha[1.0].forgetting == record.forgetting
    assert by_alpha[0.5].ood_loss != record.ood_loss_after
    assert [w["alpha"] for w in record.as_dict()["wise"]] == [0.0, 0.5, 1.0]
    assert all(torch.equal(p, original[name]) for name, p in target.model.named_parameters())  # restored
    # the weights themselves
    pre = snapshot_weights(target.model)
    tuned = {name: p + 0.01 for name, p in pre.items()}
    try:  # the target is shared by the module's tests: its weights go back even when an assert fails
        set_interpolated_weights(target.model, pre, tuned, 0.0)
        assert all(torch.equal(p, pre[name]) for name, p in target.model.named_parameters())
        set_interpolated_weights(target.model, pre, tuned, 1.0)
        assert all(torch.equal(p, tuned[name]) for name, p in target.model.named_parameters())
    finally:
        target.restore()


def test_bad_remedy_settings_are_explained(target) -> None:
    for bad, key in [(dict(replay_fraction=1.0), "replay_fraction"), (dict(replay_fraction=0.01), "replay_fraction"),
                     (dict(linear_probe_steps=-1), "linear_probe_steps"), (dict(wise_alphas=[0.5, 1.5]), "wise_alphas"),
                     (dict(wise_alphas=[float("nan")]), "wise_alphas"), (dict(replay_fraction=float("inf")), "replay_fraction")]:
        with pytest.raises(OvertrainError, match=key):
            FinetuneConfig(**BASE, **bad).validate()


def test_a_phase_whose_one_update_has_lr_zero_is_refused() -> None:
    """Cosine and linear decay the LR to 0 at a phase's last update: one update without warmup trains nothing,
    which used to run and report a fine-tuning with no change at all."""
    for bad in (dict(steps=1), dict(steps=1, schedule="linear"), dict(steps=1, warmup_fraction=0.4), dict(linear_probe_steps=1)):
        with pytest.raises(OvertrainError, match="makes its one update at LR 0") as refused:
            FinetuneConfig(**{**BASE, **bad}).validate()
        assert "schedule=constant" in refused.value.fix
    for fine in (dict(steps=1, schedule="constant"), dict(steps=1, warmup_fraction=0.6), dict(steps=2), dict(linear_probe_steps=2)):
        FinetuneConfig(**{**BASE, **fine}).validate()


def test_a_data_path_that_does_not_exist_is_refused_with_the_settings(tmp_path: Path) -> None:
    """Checked with the other settings, so that a dry run says it (the run said it only when it loaded the task)."""
    with pytest.raises(OvertrainError, match="data_path"):
        FinetuneConfig(**BASE, data_path=str(tmp_path / "nowhere")).validate()
    FinetuneConfig(**BASE, data_path=str(tmp_path)).validate()


def test_replay_with_eval_data_uses_its_unmeasured_windows(checkpoint: Path, tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(400)))
    target = load_probe_target(checkpoint, eval_tokens=512, eval_data=str(text), dtype="fp32", log=lambda *_: None, cache_dir=tmp_path / "cache")
    replay = replay_text_of(target, FinetuneConfig(**BASE, replay_fraction=0.5))
    assert replay.source.startswith("eval_data") and replay.windows is not None
    measured = {tuple(row) for row in torch.cat([target.eval_inputs, target.eval_targets[:, -1:]], dim=1).tolist()}
    assert not any(tuple(row) in measured for row in replay.windows.tolist())


def test_lp_ft_run_itself_trains_only_the_output_layer_in_its_first_phase(target, task, checkpoint: Path, monkeypatch) -> None:
    """The same property through finetune_in_place (not a re-enactment of it): the weights are read between
    the two phases the real LP-FT run goes through."""
    import overtrain.probes.finetune as finetune_module

    original = load_file(checkpoint / "model.safetensors")
    output = {id(p) for p in output_layer_parameters(target.model)}
    output_names = {name for name, p in target.model.named_parameters() if id(p) in output}
    real_phase, after_phase = finetune_module._train_phase, {}

    def recording_phase(*args, **kwargs):
        real_phase(*args, **kwargs)
        phase = kwargs.get("phase", args[-1] if args else "")
        after_phase[phase] = {name: p.detach().clone() for name, p in target.model.named_parameters()}

    monkeypatch.setattr(finetune_module, "_train_phase", recording_phase)
    try:
        finetune_in_place(target.model, task, FinetuneConfig(**{**BASE, "steps": 2}, linear_probe_steps=4), "fp32")
    finally:
        target.restore()
    assert list(after_phase) == ["output-layer", ""]  # the probe phase first, then the full phase
    probed, full = after_phase["output-layer"], after_phase[""]
    assert all(torch.equal(probed[name], original[name]) != (name in output_names) for name in probed)
    assert any(not torch.equal(full[name], probed[name]) for name in full if name not in output_names)  # phase 2 trains the rest
