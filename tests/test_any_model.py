"""Any model: tiny random transformers models of other architectures, Hub references offline, pickles refused,
init stds per family, identities, and eval_data text."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from overtrain.checkpoints.discovery import CheckpointRef, expand_checkpoints
from overtrain.checkpoints.init_std import apply_init_std_rules, family_init_std
from overtrain.cli import main as cli_main
from overtrain.data.tokenizer import END_OF_TEXT, save_hf_tokenizer, train_bpe_tokenizer
from overtrain.errors import OvertrainError
from overtrain.model.llama import LlamaLM
from overtrain.probes.finetune import FinetuneConfig, run_finetune_probe
from overtrain.probes.noise import noise_std_per_tensor, run_noise_probe
from overtrain.probes.target import load_probe_target

WIDTH, LAYERS, HEADS, FF = 32, 2, 4, 64
QUIET = {"log": lambda *_: None, "dtype": "fp32"}


def _text(documents: int = 12) -> list[str]:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [path.read_text(errors="ignore")[:3000] for path in sorted(stdlib.glob("*.py"))[:documents]]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~40x faster on one thread than on two when the machine is shared (OpenMP spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("any_model")
    previous = os.environ.get("OVERTRAIN_CACHE_DIR")
    os.environ["OVERTRAIN_CACHE_DIR"] = str(folder / "cache")  # keep eval windows and hashes out of ~/.cache
    yield folder
    if previous is None:
        os.environ.pop("OVERTRAIN_CACHE_DIR", None)
    else:
        os.environ["OVERTRAIN_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def tokenizer_folder(root: Path) -> Path:
    folder = root / "tokenizer"
    save_hf_tokenizer(train_bpe_tokenizer(_text(), 300), folder)
    return folder


@pytest.fixture(scope="module")
def eval_file(root: Path) -> Path:
    path = root / "eval.txt"
    path.write_text("\n\n".join(_text(24)[12:]))
    return path


def _vocab(tokenizer_folder: Path) -> tuple[int, int]:
    vocab = json.loads((tokenizer_folder / "tokenizer.json").read_text())["model"]["vocab"]
    return len(vocab) + 1, vocab.get(END_OF_TEXT, 0)


def _save_tiny(kind: str, root: Path, tokenizer_folder: Path) -> Path:
    """A tiny random model of ``kind`` saved with save_pretrained (safetensors) next to the tokenizer."""
    import transformers

    vocab_size, eot = _vocab(tokenizer_folder)
    common = dict(vocab_size=vocab_size, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=FF, max_position_embeddings=64, eos_token_id=eot, bos_token_id=eot, pad_token_id=eot)
    configs = {
        "gpt_neox": transformers.GPTNeoXConfig(**common),
        "olmo2": transformers.Olmo2Config(**common),
        "qwen2": transformers.Qwen2Config(**common, num_key_value_heads=2),
        "llama": transformers.LlamaConfig(**common, num_key_value_heads=2, rms_norm_eps=1e-5),
    }
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(configs[kind])
    folder = root / kind
    model.save_pretrained(folder)
    for item in tokenizer_folder.iterdir():
        shutil.copy2(item, folder / item.name)
    return folder


@pytest.fixture(scope="module")
def models(root: Path, tokenizer_folder: Path) -> dict[str, Path]:
    return {kind: _save_tiny(kind, root, tokenizer_folder) for kind in ("gpt_neox", "olmo2", "qwen2", "llama")}


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_restored(target, folder: Path) -> None:
    stored = _stored(folder)
    for name, param in target.model.named_parameters():
        assert torch.equal(param, stored[target.parameter_keys[name]].to(param.dtype)), name


@pytest.mark.parametrize("kind", ["gpt_neox", "olmo2", "qwen2"])
def test_noise_and_finetune_probes_run_on_foreign_architectures(kind: str, models: dict[str, Path], eval_file: Path) -> None:
    target = load_probe_target(models[kind], 512, str(eval_file), eval_seq_len=32, **QUIET)
    assert not isinstance(target.model, LlamaLM) and target.identity["implementation"] == "transformers"
    assert target.eval_inputs.shape == (16, 32) and target.tokens_seen is None
    for mode in ("relative", "init"):
        records = run_noise_probe(target, gammas=[0.5, 4.0], seeds=[0, 1], mode=mode)
        assert len(records) == 4 and all(torch.isfinite(torch.tensor(r.perturbed_loss)) for r in records)
        assert len({r.base_loss for r in records}) == 1 and records[0].checkpoint == str(models[kind])
        assert max(abs(r.delta) for r in records if r.gamma == 4.0) > 0
        _assert_restored(target, models[kind])
    config = FinetuneConfig(task="wordnet-class", lr=3e-3, steps=3, batch_size=4, max_train=20, max_heldout=5, max_len=64)
    record = run_finetune_probe(target, config)
    assert record.id_loss_after < record.id_loss_before and record.ood_loss_after != record.ood_loss_before
    _assert_restored(target, models[kind])


def test_a_plain_llama_folder_runs_on_our_fast_model_with_transformers_numbers(models: dict[str, Path], eval_file: Path) -> None:
    from transformers import AutoModelForCausalLM

    target = load_probe_target(models["llama"], 512, str(eval_file), eval_seq_len=32, **QUIET)
    assert isinstance(target.model, LlamaLM) and target.identity["implementation"] == "overtrain-llama"
    reference = AutoModelForCausalLM.from_pretrained(models["llama"], dtype=torch.float32)
    ours, theirs = target.pretraining_loss().loss, target.pretraining_loss(reference).loss
    assert ours == pytest.approx(theirs, abs=1e-5)
    run_noise_probe(target, gammas=[1.0], seeds=[0], mode="init")
    _assert_restored(target, models["llama"])


def test_init_std_comes_from_the_family_table(models: dict[str, Path], eval_file: Path) -> None:
    neox = load_probe_target(models["gpt_neox"], 256, str(eval_file), eval_seq_len=32, **QUIET)
    assert neox.init_std["gpt_neox.layers.1.attention.dense.weight"] == pytest.approx(2 / (LAYERS * WIDTH**0.5))  # wang_init
    assert neox.init_std["gpt_neox.layers.0.attention.query_key_value.weight"] == pytest.approx((2 / (5 * WIDTH)) ** 0.5)
    assert neox.init_std["gpt_neox.layers.0.attention.query_key_value.bias"] == 0.0
    assert neox.init_std["gpt_neox.final_layer_norm.weight"] == 0.0
    olmo2 = load_probe_target(models["olmo2"], 256, str(eval_file), eval_seq_len=32, **QUIET)
    assert {std for name, std in olmo2.init_std.items() if "norm" not in name} == {0.02}
    ruled = load_probe_target(models["olmo2"], 256, str(eval_file), eval_seq_len=32, init_std_rules={"*o_proj.weight": 0.001}, **QUIET)
    assert ruled.init_std["model.layers.0.self_attn.o_proj.weight"] == 0.001
    assert ruled.init_std["model.layers.0.self_attn.q_proj.weight"] == 0.02


def test_an_unknown_family_needs_rules_or_mode_relative() -> None:
    shapes = {"transformer.h.0.mlp.fc_in.weight": (8, 4), "transformer.h.0.ln.weight": (4,)}
    unknown = family_init_std({"model_type": "phi"}, shapes)
    assert unknown.stds is None and "phi" in unknown.source
    with pytest.raises(OvertrainError, match="mode=relative") as caught:
        noise_std_per_tensor({name: torch.zeros(shape) for name, shape in shapes.items()}, "init", 1.0, None, unknown.source)
    assert "phi" in caught.value.problem
    ruled = apply_init_std_rules(unknown, {"*": 0.01}, shapes)
    assert ruled.stds == {"transformer.h.0.mlp.fc_in.weight": 0.01, "transformer.h.0.ln.weight": 0.0}


def test_identity_names_the_weights(models: dict[str, Path], eval_file: Path, root: Path) -> None:
    target = load_probe_target(models["qwen2"], 256, str(eval_file), eval_seq_len=32, **QUIET)
    identity = target.identity
    expected = hashlib.sha256((models["qwen2"] / "model.safetensors").read_bytes()).hexdigest()
    assert identity["kind"] == "local" and identity["weights_sha256"] == expected
    assert identity["architecture"] == "Qwen2ForCausalLM" and identity["commit"] is None and identity["tokens_seen"] is None
    assert expected in (root / "cache" / "file_sha256.json").read_text()  # cached by path, size and mtime
    json.dumps(identity)  # ready for a result row


def _hub_cache(root: Path, repo: str, revision: str, model_folder: Path) -> tuple[Path, str]:
    """A Hugging Face cache as huggingface_hub lays it out: refs/REVISION -> commit, snapshot files -> blobs."""
    cache = root / "hf_cache"
    storage = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    snapshot, blobs = storage / "snapshots" / commit, storage / "blobs"
    snapshot.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(exist_ok=True)
    for item in model_folder.iterdir():
        blob = blobs / hashlib.sha256(item.read_bytes()).hexdigest()
        shutil.copy2(item, blob)
        (snapshot / item.name).symlink_to(os.path.relpath(blob, snapshot))
    return cache, commit


def test_hub_reference_resolves_offline_through_huggingface_hub(models: dict[str, Path], eval_file: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, commit = _hub_cache(root, "tiny-org/tiny-qwen2", "step100", models["qwen2"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = load_probe_target("hf:tiny-org/tiny-qwen2@step100", 256, str(eval_file), eval_seq_len=32, **QUIET)
    identity = target.identity
    assert (identity["kind"], identity["repo"], identity["revision"], identity["commit"]) == ("hub", "tiny-org/tiny-qwen2", "step100", commit)
    assert identity["weights_sha256"] == hashlib.sha256((models["qwen2"] / "model.safetensors").read_bytes()).hexdigest()
    assert run_noise_probe(target, [1.0], [0], mode="relative")[0].checkpoint == "hf:tiny-org/tiny-qwen2@step100"
    with pytest.raises(OvertrainError, match="list_repo_refs") as caught:
        load_probe_target("hf:tiny-org/tiny-qwen2@step999", 256, str(eval_file), **QUIET)
    assert "step999" in caught.value.problem


class _WritesAFile:
    """A pickle payload: unpickling it calls Path.write_text, so loading it leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickled_weights_are_refused_and_never_unpickled(root: Path, models: dict[str, Path], eval_file: Path, tmp_path: Path) -> None:
    armed = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_WritesAFile(armed)))  # the payload works: unpickling writes its file
    assert armed.read_text() == "unpickled"
    folder, marker = tmp_path / "pickled", tmp_path / "was_unpickled.txt"
    folder.mkdir()
    shutil.copy2(models["gpt_neox"] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesAFile(marker)))
    with pytest.raises(OvertrainError, match="pickle") as caught:
        load_probe_target(folder, 256, str(eval_file), **QUIET)
    assert "safe_serialization=True" in caught.value.fix
    assert not marker.exists()


def test_the_dry_run_refuses_a_garbage_config_and_keeps_the_conversion_fix_of_pickled_weights(
    models: dict[str, Path], eval_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage"
    shutil.copytree(models["gpt_neox"], garbage)
    (garbage / "config.json").write_text("{not json")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy2(models["gpt_neox"] / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    for folder, problem, fix in ((garbage, "config.json is not readable JSON", "restore or re-download"),
                                 (pickled, "pickle", "safe_serialization=True")):
        capsys.readouterr()
        assert cli_main(["noise", str(folder), f"eval_data={eval_file}", f"--out={tmp_path / 'out'}", "--dry-run"]) == 2
        error = capsys.readouterr().err
        assert problem in error and fix in error and "Traceback" not in error, error
    assert not (tmp_path / "out").exists()


def test_a_truncated_weight_file_of_a_transformers_model_is_named_with_its_fix(models: dict[str, Path], tmp_path: Path) -> None:
    from overtrain.checkpoints.foreign import load_transformers_model

    folder = tmp_path / "cut"
    shutil.copytree(models["gpt_neox"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # a download that stopped
    with pytest.raises(OvertrainError, match="model.safetensors") as caught:
        load_transformers_model(folder, json.loads((folder / "config.json").read_text()))
    assert "re-download" in caught.value.fix and "architecture" not in caught.value.fix


def test_expand_checkpoints_accepts_foreign_folders_and_hub_references(models: dict[str, Path], root: Path) -> None:
    refs = expand_checkpoints([str(models["qwen2"]), "hf:EleutherAI/pythia-160m@step1000", "hf:EleutherAI/pythia-160m"])
    assert refs == [
        CheckpointRef(str(models["qwen2"]), "local"),
        CheckpointRef("hf:EleutherAI/pythia-160m@step1000", "hub"),
        CheckpointRef("hf:EleutherAI/pythia-160m@main", "hub"),
    ]
    family = root / "family"
    for step in (10, 2):
        shutil.copytree(models["olmo2"], family / f"step{step}", dirs_exist_ok=True)
    assert [ref.path.name for ref in expand_checkpoints([str(family)])] == ["step2", "step10"]
    with pytest.raises(OvertrainError, match="hf:ORG/NAME"):
        expand_checkpoints([str(root / "nowhere")])


def test_a_foreign_model_needs_eval_data(models: dict[str, Path]) -> None:
    with pytest.raises(OvertrainError, match="eval_data"):
        load_probe_target(models["qwen2"], 256, **QUIET)


def test_bad_eval_data_is_explained(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "short.txt").write_text("too short")
    cases = {str(tmp_path / "missing.txt"): "does not exist", str(tmp_path / "empty.txt"): "no text",
             str(tmp_path / "short.txt"): "fewer than one window"}
    for source, message in cases.items():
        with pytest.raises(OvertrainError, match=message):
            load_probe_target(models["qwen2"], 256, source, eval_seq_len=32, **QUIET)


def test_eval_windows_are_fixed_and_cached(models: dict[str, Path], tmp_path: Path) -> None:
    records = [{"text": text} for text in _text(20)[12:]]
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))
    messages: list[str] = []
    first = load_probe_target(models["olmo2"], 256, str(jsonl), eval_seq_len=16, dtype="fp32", log=messages.append)
    assert any("tokenizing eval text" in message for message in messages)
    messages.clear()
    again = load_probe_target(models["gpt_neox"], 256, str(jsonl), eval_seq_len=16, dtype="fp32", log=messages.append)
    assert not messages  # same tokenizer files, text and windows: read from the cache
    assert torch.equal(first.eval_inputs, again.eval_inputs) and first.eval_inputs.shape == (16, 16)
    other = load_probe_target(models["olmo2"], 256, str(jsonl), eval_seq_len=8, **QUIET)
    assert other.eval_inputs.shape == (32, 8)


def test_our_checkpoint_takes_eval_data_and_keeps_its_identity(root: Path, tokenizer_folder: Path, eval_file: Path) -> None:
    import dataclasses

    from overtrain.checkpoints.folder import save_checkpoint
    from overtrain.model.config import ModelConfig
    from overtrain.model.llama import build_model

    vocab_size, eot = _vocab(tokenizer_folder)
    config = ModelConfig(d_model=WIDTH, n_layers=LAYERS, n_heads=HEADS)
    model, stds = build_model(config, vocab_size, 32, seed=0)
    run_config = {"model": dataclasses.asdict(config), "data": {"corpus": "embedded"}, "train": {"seq_len": 32}}
    folder = save_checkpoint(root / "ours", model=model, optimizer=None, step=3, tokens_seen=3072, run_config=run_config,
                             init_std=stds, tokenizer_folder=tokenizer_folder, end_of_text_id=eot)
    target = load_probe_target(folder, 512, str(eval_file), **QUIET)
    assert isinstance(target.model, LlamaLM) and target.eval_inputs.shape == (16, 32) and target.end_of_text_id == eot
    assert target.identity["kind"] == "overtrain" and target.identity["tokens_seen"] == 3072 == target.tokens_seen
    assert target.identity["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert target.init_std_source == "overtrain.json" and target.eval_source == str(eval_file)
    run_noise_probe(target, [1.0], [0], mode="init")
    _assert_restored(target, folder)
    assert expand_checkpoints([str(folder)]) == [CheckpointRef(str(folder), "overtrain", 3072)]


def test_tensor_reads_restore_bf16_files_exactly_and_refuse_truncation(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from overtrain.checkpoints.tensor_files import read_tensors_into

    stored = torch.randn(4, 6).to(torch.bfloat16)
    path = tmp_path / "w.safetensors"
    save_file({"w": stored, "b": torch.arange(6, dtype=torch.float32)}, str(path))
    weight, bias = torch.zeros(4, 6), torch.zeros(6)
    read_tensors_into(path, {"w": weight, "b": bias})
    assert torch.equal(weight, stored.float()) and torch.equal(bias, torch.arange(6, dtype=torch.float32))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(OvertrainError, match="truncated"):
        read_tensors_into(path, {"w": weight, "b": bias})
