"""Fine-tuning at scale on CPUs: two gloo processes reach the single-process weights (DDP and FSDP), a sweep
under two ranks stores rank 0's rows only, gradient checkpointing changes nothing, and the GPU memory/time
estimator reproduces the textbook 16 bytes per parameter of mixed-precision AdamW."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import write_stdlib_text_corpus, write_untrained_checkpoint
from test_families import hub  # noqa: F401 - the fixture replaying recorded Hub listings

from overtrain.errors import OvertrainError
from overtrain.pretrain.distributed import DistributedContext
from overtrain.probes.finetune import EncodedTask, FinetuneConfig, finetune_in_place, run_finetune_probe, snapshot_weights
from overtrain.probes.finetune_distributed import check_distributed_settings, gradient_checkpointing
from overtrain.probes.target import load_probe_target
from overtrain.sweep.plan import finetune_spec

# reg_lambda and micro-batches on: the pull and the accumulation are both exercised across the processes
RUN = dict(task="kjv-to-web", lr=3e-3, steps=4, batch_size=8, max_train=64, max_heldout=4, max_len=40, seed=1,
           reg_lambda=0.05, micro_batch_size=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scale")
    corpus = write_stdlib_text_corpus(root / "corpus", documents=3)
    return write_untrained_checkpoint(root / "run"), corpus


def _target(checkpoint: Path, corpus: Path):
    return load_probe_target(checkpoint, eval_tokens=256, eval_data=str(corpus), dtype="fp32", log=lambda *_: None,
                             cache_dir=checkpoint.parent.parent / "cache")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, checkpoint: Path, corpus: Path, out: Path) -> None:
    """One torchrun-like process: a DDP sweep through the finetune verb's driver, then an FSDP run."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from overtrain.probes.finetune_distributed import scaled_for_finetuning
    from overtrain.sweep.driver import run_sweep_file

    settings = ",".join(f"{key}: {value}" for key, value in RUN.items())
    overrides = [f"out_dir={out / 'sweep'}", f"checkpoints=[{checkpoint}]", f"finetune={{{settings}}}", f"finetune.eval_data={corpus}",
                 "finetune.eval_tokens=256", "report=false"]
    assert run_sweep_file(None, overrides, dry_run=False) == 0
    target = _target(checkpoint, corpus)
    config = FinetuneConfig(**{**RUN, "reg_lambda": 0.0, "distributed": "fsdp"})
    task = EncodedTask(target, config)
    with scaled_for_finetuning(target, config):
        finetune_in_place(target.model, task, config, target.dtype)
    if rank == 0:
        torch.save(snapshot_weights(target.model), out / "fsdp_weights.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # ~25 s of CPU: two spawned processes import torch and run a sweep
def test_two_processes_reach_the_single_process_weights(checkpoint, tmp_path: Path) -> None:
    from overtrain.results.store import ResultStore

    path, corpus = checkpoint
    mp.spawn(_rank_main, args=(2, _free_port(), path, corpus, tmp_path), nprocs=2, join=True)

    target = _target(path, corpus)
    single = run_finetune_probe(target, FinetuneConfig(**RUN))
    with ResultStore(tmp_path / "sweep" / "results.sqlite") as store:
        rows = store.rows(kind="finetune")
    assert len(rows) == 1  # rank 0 alone stored the job
    stored = rows[0].metrics
    assert stored["train_tokens"] == single.train_tokens
    assert stored["id_loss_before"] == pytest.approx(single.id_loss_before, abs=1e-6)
    assert stored["id_loss_after"] != pytest.approx(single.id_loss_before, abs=1e-3)  # it did train
    assert stored["id_loss_after"] == pytest.approx(single.id_loss_after, abs=1e-4)
    assert stored["ood_loss_after"] == pytest.approx(single.ood_loss_after, abs=1e-4)

    config = FinetuneConfig(**{**RUN, "reg_lambda": 0.0})
    finetune_in_place(target.model, EncodedTask(target, config), config, target.dtype)
    expected = snapshot_weights(target.model)
    target.restore()
    sharded = torch.load(tmp_path / "fsdp_weights.pt")
    assert expected.keys() == sharded.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(sharded[name], tensor, atol=2e-5, rtol=1e-4, msg=name)
    assert any(not torch.equal(tensor, target.model.state_dict()[name]) for name, tensor in expected.items())


def _loss_and_grads(model: torch.nn.Module, inputs: torch.Tensor, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.train()
    with gradient_checkpointing(model, checkpointing):
        output = model(inputs)
        logits = output if isinstance(output, torch.Tensor) else output.logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), inputs[:, 1:].flatten())
        loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}


def _tiny_model(kind: str) -> torch.nn.Module:
    import transformers

    from overtrain.model.config import ModelConfig
    from overtrain.model.llama import build_model

    if kind == "ours":
        return build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), 64, 16, seed=0)[0]
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16))


@pytest.mark.parametrize("kind", ["ours", "transformers"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(kind: str) -> None:
    model = _tiny_model(kind)
    inputs = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    plain_loss, plain_grads = _loss_and_grads(model, inputs, checkpointing=False)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        checkpointed_loss, checkpointed_grads = _loss_and_grads(model, inputs, checkpointing=True)
    assert checkpointed_loss == pytest.approx(plain_loss, abs=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(-t.numel()) or t, lambda t: t):
        _loss_and_grads(model, inputs, checkpointing=False)
    kept_with, kept_without = sum(n for n in saved if n > 0), -sum(n for n in saved if n < 0)
    assert kept_with < kept_without  # it really checkpointed: fewer values saved for the backward pass
    assert not getattr(model, "is_activation_checkpointing", False)  # switched off again


def test_scale_settings_are_off_by_default_and_keep_job_keys() -> None:
    spec = finetune_spec(FinetuneConfig())
    assert not {"precision", "gradient_checkpointing", "device", "distributed", "micro_batch_size"} & spec.keys()
    changed = finetune_spec(FinetuneConfig(gradient_checkpointing=True, precision="bf16"))
    assert changed["gradient_checkpointing"] is True and changed["precision"] == "bf16"


def test_bad_scale_settings_are_explained() -> None:
    with pytest.raises(OvertrainError) as error:
        FinetuneConfig(precision="fp16", device="gpu", distributed="zero3", micro_batch_size=0).validate()
    for key in ("precision", "device", "distributed", "micro_batch_size"):
        assert key in str(error.value)
    two = DistributedContext(rank=0, world_size=2)
    with pytest.raises(OvertrainError, match="multiple of 2"):
        check_distributed_settings(FinetuneConfig(batch_size=7), two)
    with pytest.raises(OvertrainError, match="fsdp cannot run reg_lambda"):
        check_distributed_settings(FinetuneConfig(distributed="fsdp", reg_lambda=0.1), two)
    check_distributed_settings(FinetuneConfig(distributed="fsdp", reg_lambda=0.1, batch_size=7), DistributedContext())  # one process


def test_memory_estimate_is_16_bytes_per_parameter_for_adamw_and_shards_under_fsdp() -> None:
    from overtrain.families.registry import find_family
    from overtrain.probes.finetune_scale import GIB, PAPER_CONFIGS, RunShape, estimate_finetune, shape_from_hf_config

    one_b = shape_from_hf_config(PAPER_CONFIGS["allenai/OLMo-1B-hf"], "olmo-1b")
    seven_b = shape_from_hf_config(PAPER_CONFIGS["allenai/OLMo-2-1124-7B"], "olmo2-7b")
    assert (one_b.parameters, seven_b.parameters) == (find_family("olmo-1b").parameters, find_family("olmo2-7b").parameters)
    # activations measured on narrow twins: with checkpointing a layer keeps only its fp32 input, 4 bytes x width
    assert one_b.layer_bytes_per_token[1] == 4 * 2048 and seven_b.layer_bytes_per_token[1] == 4 * 4096
    assert one_b.layer_bytes_per_token[0] > 10 * one_b.layer_bytes_per_token[1]
    run = RunShape(steps=10, batch_size=8, max_len=100, micro_batch_size=1)
    single = estimate_finetune(one_b, run, gpus=1)
    states = single.memory["weights"] + single.memory["gradients"] + single.memory["adamw"]
    assert states == 16 * one_b.parameters  # fp32 weights + fp32 grads + two AdamW moments
    assert 17 < states / GIB < 18  # a 1.18B model: ~17.5 GiB before activations
    sharded = estimate_finetune(seven_b, RunShape(10, 8, 100, 1, distributed="fsdp"), gpus=8)
    assert sharded.memory["adamw"] == 8 * seven_b.parameters / 8 and sharded.mode == "fsdp"
    assert not estimate_finetune(seven_b, run, gpus=1).fits and sharded.fits
    # time: 6 x params x tokens at the stated MFU (no evaluation tokens here); checkpointing repeats the forward
    assert single.seconds == pytest.approx(6 * one_b.parameters * 10 * 8 * 100 / (989e12 * 0.35))
    checkpointed = estimate_finetune(one_b, RunShape(10, 8, 100, 1, gradient_checkpointing=True), gpus=1)
    assert checkpointed.seconds == pytest.approx(single.seconds * 8 / 6)
    assert checkpointed.memory["activations"] < single.memory["activations"] / 3


def test_dry_run_prints_the_gpu_estimate_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overtrain.cli import main as cli_main

    reference = "hf:allenai/OLMo-1B-hf@step20000-tokens84B"
    (tmp_path / "eval.txt").write_text("Some held-out text to measure the pre-training loss on.\n")
    code = cli_main(["finetune", reference, "task=kjv-to-web", "steps=100", "batch_size=64", "max_len=512", "micro_batch_size=8",
                     f"eval_data={tmp_path / 'eval.txt'}", "--out", str(tmp_path / "out"), "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and "GPU estimate" in printed and "1.18B parameters" in printed
    assert "1 x H100 SXM 80GB (one GPU)" in printed and "8 x H100 SXM 80GB (ddp)" in printed
    assert not (tmp_path / "out").exists()


def test_ray_jobs_reserve_the_gpus_the_sweep_asks_for() -> None:
    from overtrain.sweep.config import ExecutorConfig, load_sweep_config
    from overtrain.sweep.driver import build_executor

    assert build_executor(ExecutorConfig(kind="ray", gpus_per_worker=1)).num_gpus_per_job == 1
    assert build_executor(ExecutorConfig(kind="ray")).num_gpus_per_job == 0
    with pytest.raises(OvertrainError, match="gpus_per_worker"):
        load_sweep_config(None, ["checkpoints=[hf:allenai/OLMo-1B-hf@main]", "noise={}", "executor.gpus_per_worker=-1"])


@pytest.mark.parametrize("name", ["olmo1b_hh_family", "olmo2_7b_tulu_family"])
def test_paper_family_configs_dry_run_on_recorded_listings(name: str, hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overtrain.cli import main as cli_main

    config = Path(__file__).resolve().parent.parent / "configs" / "paper" / f"{name}.yaml"
    assert cli_main(["sweep", str(config), f"out_dir={tmp_path / 'out'}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "GPU estimate (arithmetic, not measured" in printed and "finetune" in printed
    if name == "olmo2_7b_tulu_family":  # one 7B run needs FSDP over the node; a single GPU is refused by the estimate
        assert "8 x H100 SXM 80GB (fsdp)" in printed and "(one GPU):" in printed and "does NOT fit" in printed
        assert "stage1-step175000" not in printed  # a branch serving duplicate shards (allenai/OLMo#915) is not tuned
    else:
        assert "1 x H100 SXM 80GB (one GPU)" in printed and "does NOT fit" not in printed
    assert not (tmp_path / "out").exists()


def test_precision_auto_follows_the_hardware_and_an_explicit_precision_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    import overtrain.precision as precision
    from overtrain.probes.finetune_distributed import finetune_device, finetune_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)  # a CPU with AMX
    assert finetune_dtype("auto", "auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert finetune_dtype("auto", "auto", cpu) == "fp32"
    assert finetune_dtype("bf16", "fp32", cpu) == "bf16" and finetune_dtype("fp32", "bf16", cpu) == "fp32"
    assert finetune_dtype("auto", "fp32", cpu) == "fp32"  # auto keeps the target's own dtype
    if not torch.cuda.is_available():
        with pytest.raises(OvertrainError, match="no GPU"):
            finetune_device("cuda", DistributedContext())
        assert finetune_device("auto", DistributedContext()) == cpu
