"""The Gaussian and fine-tuning probes on real tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_pretrain_config, write_stdlib_text_corpus
from safetensors.torch import load_file

from overtrain.errors import OvertrainError
from overtrain.pretrain.loop import train_run
from overtrain.probes.finetune import FinetuneConfig, run_finetune_probe, select_tuned
from overtrain.probes.noise import NoiseDraw, noise_std_per_tensor, perturbed, run_noise_probe
from overtrain.probes.target import load_probe_target


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    corpus = write_stdlib_text_corpus(root / "corpus")
    config = tiny_pretrain_config(root, corpus, "train.max_tokens=16384", "train.dtype=fp32")
    return train_run(config, log=lambda *_: None).final_checkpoint


def test_noise_is_undone_bitwise(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=1024, dtype="fp32", log=lambda *_: None)
    original = {name: p.detach().clone() for name, p in target.model.named_parameters()}
    with perturbed(target.model, NoiseDraw(gamma=1.0, seed=3), target.info.init_std, target.weights_file) as noisy:
        changed = [name for name, p in noisy.named_parameters() if not torch.equal(p, original[name])]
    assert "model.embed_tokens.weight" in changed
    assert "model.norm.weight" not in changed  # constant-initialized: no noise in init mode
    assert all(torch.equal(p, original[name]) for name, p in target.model.named_parameters())


def test_noise_std_follows_each_tensors_init_std(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=1024, dtype="fp32", log=lambda *_: None)
    named = dict(target.model.named_parameters())
    stds = noise_std_per_tensor(named, "init", 2.0, target.info.init_std)
    assert stds["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.04)
    assert stds["model.layers.0.input_layernorm.weight"] == 0.0
    relative = noise_std_per_tensor(named, "relative", 0.5, None)
    assert relative["model.layers.0.input_layernorm.weight"] > 0
    with torch.no_grad():
        weight = named["model.layers.1.self_attn.q_proj.weight"]
        before = weight.clone()
        with perturbed(target.model, NoiseDraw(gamma=3.0, seed=0), target.info.init_std, target.weights_file):
            measured = float((weight - before).std())
    assert measured == pytest.approx(3.0 * 0.02, rel=0.1)


def test_noise_probe_records_grow_with_gamma(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=2048, dtype="fp32", log=lambda *_: None)
    records = run_noise_probe(target, gammas=[0.5, 4.0], seeds=[0, 1])
    assert len(records) == 4
    assert len({r.base_loss for r in records}) == 1
    small = [r.delta for r in records if r.gamma == 0.5]
    large = [r.delta for r in records if r.gamma == 4.0]
    assert min(large) > max(small) > -0.05


def test_bad_noise_input_is_explained(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=1024, dtype="fp32", log=lambda *_: None)
    with pytest.raises(OvertrainError, match="negative"):
        run_noise_probe(target, gammas=[-1.0], seeds=[0])
    named = dict(target.model.named_parameters())
    with pytest.raises(OvertrainError, match="mode=relative") as caught:
        noise_std_per_tensor(named, "init", 1.0, None)
    assert "absolute" in caught.value.fix
    with pytest.raises(OvertrainError, match="overflowed") as caught:  # a NaN loss is refused, never stored
        run_noise_probe(target, gammas=[1e38], seeds=[0], mode="absolute")
    assert "smaller gammas" in caught.value.fix


def test_a_stored_non_finite_loss_is_named_with_the_row_to_delete(tmp_path: Path) -> None:
    from overtrain.results.analysis import noise_frame
    from overtrain.results.records import Job, JobOutput
    from overtrain.results.store import ResultStore

    with ResultStore(tmp_path / "results.sqlite") as store:  # as an older overtrain stored an overflowed draw
        draws = [{"gamma": 1e38, "seed": 0, "mode": "absolute", "perturbed_loss": float("nan"), "delta": float("nan")}]
        store.put(Job("noise", {"checkpoint": "c", "mode": "absolute", "gammas": [1e38]}),
                  JobOutput({"tokens_seen": 100, "base_loss": 3.0, "draws": draws}), {}, 1.0)
        with pytest.raises(OvertrainError, match=r"holds perturbed_loss at gamma 1e\+38=nan") as caught:
            noise_frame(store)
    assert "DELETE FROM results WHERE key" in caught.value.fix


def test_finetuning_improves_the_task_and_is_undone(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=2048, dtype="fp32", log=lambda *_: None)
    original = load_file(checkpoint / "model.safetensors")
    config = FinetuneConfig(task="wordnet-class", lr=3e-3, steps=30, batch_size=8, max_train=400, max_heldout=45)
    record = run_finetune_probe(target, config)
    assert record.id_loss_after < record.id_loss_before
    assert record.ood_loss_after > record.ood_loss_before  # forgetting
    assert record.forgetting == pytest.approx(record.ood_loss_after - record.ood_loss_before)
    assert record.id_accuracy_before is not None and 0.0 <= record.id_accuracy_after <= 1.0
    assert record.train_tokens > 0
    assert all(torch.equal(p, original[name]) for name, p in target.model.named_parameters())


def test_regularization_pulls_toward_pretrained_weights(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=2048, dtype="fp32", log=lambda *_: None)
    base = dict(task="wordnet-class", lr=3e-3, steps=20, batch_size=8, max_train=200, max_heldout=20)
    free = run_finetune_probe(target, FinetuneConfig(**base))
    pulled = run_finetune_probe(target, FinetuneConfig(**base, reg_lambda=10.0))
    assert pulled.forgetting < free.forgetting


def test_tuned_lr_selection_picks_best_id_loss() -> None:
    rows = [
        {"checkpoint": "a", "task": "t", "seed": 0, "reg_lambda": 0.0, "lr": 1e-3, "id_loss_after": 2.0},
        {"checkpoint": "a", "task": "t", "seed": 0, "reg_lambda": 0.0, "lr": 1e-2, "id_loss_after": 1.5},
        {"checkpoint": "b", "task": "t", "seed": 0, "reg_lambda": 0.0, "lr": 1e-3, "id_loss_after": 1.0},
    ]
    tuned = {row["checkpoint"]: row["lr"] for row in select_tuned(rows)}
    assert tuned == {"a": 1e-2, "b": 1e-3}


def test_bad_finetune_input_is_explained(checkpoint: Path) -> None:
    target = load_probe_target(checkpoint, eval_tokens=1024, dtype="fp32", log=lambda *_: None)
    with pytest.raises(OvertrainError, match=r"^lr=0\.0 is invalid"):
        run_finetune_probe(target, FinetuneConfig(task="wordnet-class", lr=0.0))
    with pytest.raises(OvertrainError, match="unknown task"):
        run_finetune_probe(target, FinetuneConfig(task="wordnet-clas"))


def test_tokenizer_mismatch_is_explained(checkpoint: Path, tmp_path: Path) -> None:
    from overtrain.data.tokenizer import save_hf_tokenizer, train_bpe_tokenizer
    from overtrain.probes.target import check_same_tokenizer

    other = tmp_path / "other"
    save_hf_tokenizer(train_bpe_tokenizer(["completely different text " * 50], 300), other)
    with pytest.raises(OvertrainError, match="corpus changed since the checkpoint was made") as caught:
        check_same_tokenizer(checkpoint, other)
    assert "restore the corpus" in caught.value.fix and "delete that cache" not in caught.value.fix


@pytest.mark.parametrize("lr", [1e20, 1e38])  # a NaN loss, and an update that overflows fp32 before any loss is NaN
def test_a_fine_tuning_lr_too_large_is_one_message(checkpoint: Path, lr: float) -> None:
    target = load_probe_target(checkpoint, eval_tokens=1024, dtype="fp32", log=lambda *_: None)
    config = FinetuneConfig(task="wordnet-class", lr=lr, steps=5, batch_size=4, max_train=40, max_heldout=20, grad_clip=0.0)
    with pytest.raises(OvertrainError) as caught:
        run_finetune_probe(target, config)
    assert caught.value.fix == "lower the fine-tuning lr"
