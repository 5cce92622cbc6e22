"""Pre-training end to end: HF checkpoints, exact resumption after SIGKILL, ladders, DDP, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_pretrain_config, write_stdlib_text_corpus
from safetensors.torch import load_file

from overtrain.checkpoints.discovery import list_checkpoints
from overtrain.checkpoints.folder import load_model
from overtrain.cli import main as cli_main
from overtrain.data.tokens import heldout_windows, open_token_data, train_batch
from overtrain.errors import OvertrainError
from overtrain.model.loss import mean_token_loss
from overtrain.pretrain.ladder import run_ladder
from overtrain.pretrain.loop import _refuse_unusable_products_pin, train_run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_text_corpus(tmp_path_factory.mktemp("corpus"))


def _overrides_for(config) -> list[str]:
    """The same config as command-line overrides (for runs in a subprocess)."""
    c = config
    return [
        f"out_dir={c.out_dir}", f"data.corpus={c.data.corpus}", f"data.cache_dir={c.data.cache_dir}",
        f"data.vocab_size={c.data.vocab_size}", f"data.heldout_fraction={c.data.heldout_fraction}",
        f"model.d_model={c.model.d_model}", f"model.n_layers={c.model.n_layers}", f"model.n_heads={c.model.n_heads}",
        f"train.batch_size={c.train.batch_size}", f"train.seq_len={c.train.seq_len}", f"train.max_tokens={c.train.max_tokens}",
        f"train.warmup_tokens={c.train.warmup_tokens}", f"train.eval_every_tokens={c.train.eval_every_tokens}",
        f"train.eval_tokens={c.train.eval_tokens}", f"train.lr={c.train.lr}", f"train.threads={c.train.threads}",
        f"train.checkpoint_every_tokens={c.train.checkpoint_every_tokens}", f"train.dtype={c.train.dtype}",
    ]


def test_checkpoint_loads_in_transformers_with_the_same_loss(tmp_path: Path, corpus: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = tiny_pretrain_config(tmp_path, corpus, "train.dtype=fp32", "model.tie_embeddings=true")  # as every preset
    result = train_run(config, log=lambda *_: None)
    folder = result.final_checkpoint
    hf_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    ours, info = load_model(folder)
    assert info.tokens_seen == result.tokens_seen == 8192
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")  # stored once, as transformers does
    assert hf_model.config.tie_word_embeddings
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(hf_model.lm_head.weight, ours.model.embed_tokens.weight)

    data = open_token_data(next((tmp_path / "cache").iterdir()))
    inputs, targets = heldout_windows(data, 2048, 32)
    ours_loss = mean_token_loss(ours, inputs, targets, dtype="fp32").loss
    theirs_loss = mean_token_loss(hf_model, inputs, targets, dtype="fp32").loss
    assert ours_loss == pytest.approx(theirs_loss, rel=1e-5)
    assert ours_loss == pytest.approx(result.final_heldout_loss, rel=1e-5)
    assert ours_loss < 6.2  # ln(512) = 6.24: it learned something

    text = "def main():\n    return 42\n"
    assert hf_tokenizer.decode(hf_tokenizer(text)["input_ids"]) == text
    assert hf_tokenizer.eos_token == "<|endoftext|>"


def test_metrics_are_logged_in_tokens(tmp_path: Path, corpus: Path) -> None:
    train_run(tiny_pretrain_config(tmp_path, corpus), log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens_seen"] for r in records] == [4096, 8192]
    assert all(r["heldout_loss"] > 0 and r["tokens_per_second"] > 0 for r in records)


TIMING_FIELDS = ("tokens_per_second", "model_flops_per_second", "elapsed_seconds")


def metrics_without_timing(run: Path) -> list[dict]:
    """metrics.jsonl of a run, less the fields that measure time (they differ between any two runs)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS} for record in records]


def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(tmp_path: Path, corpus: Path) -> None:
    # evaluation points (every 3072 tokens) fall between checkpoints (every 4096), so a resume that counts
    # them from the checkpoint instead of from zero logs other points than the uninterrupted run
    settings = ("train.max_tokens=32768", "train.checkpoint_every_tokens=4096", "train.dtype=fp32", "train.eval_every_tokens=3072")
    reference = tiny_pretrain_config(tmp_path / "reference", corpus, *settings, f"data.cache_dir={tmp_path / 'cache'}")
    reference_result = train_run(reference, log=lambda *_: None)

    killed = tiny_pretrain_config(tmp_path / "killed", corpus, *settings, f"data.cache_dir={tmp_path / 'cache'}")
    process = subprocess.Popen([sys.executable, "-m", "overtrain", "pretrain", *_overrides_for(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list_checkpoints(Path(killed.out_dir))) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    survivors = list_checkpoints(Path(killed.out_dir))
    assert 2 <= len(survivors) < len(list_checkpoints(Path(reference.out_dir))), "kill the run mid-way"

    resumed = train_run(killed, log=lambda *_: None)
    expected = load_file(reference_result.final_checkpoint / "model.safetensors")
    actual = load_file(resumed.final_checkpoint / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    expected_rows = metrics_without_timing(Path(reference.out_dir))
    assert [row["tokens_seen"] for row in expected_rows] == [3072 * k for k in range(1, 11)] + [32768]
    assert metrics_without_timing(Path(killed.out_dir)) == expected_rows, "same rows, same points, each once"


def test_run_killed_before_its_first_checkpoint_logs_no_row_twice(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import overtrain.pretrain.loop as loop_module

    settings = ("train.eval_every_tokens=2048", "train.dtype=fp32", "train.checkpoint_every_tokens=6144")
    reference = tiny_pretrain_config(tmp_path / "reference", corpus, *settings, f"data.cache_dir={tmp_path / 'cache'}")
    train_run(reference, log=lambda *_: None)
    crashed = tiny_pretrain_config(tmp_path / "crashed", corpus, *settings, f"data.cache_dir={tmp_path / 'cache'}")
    real_checkpoint = loop_module._TrainingLoop._checkpoint

    def crash_at_first_checkpoint(self, out_dir):
        raise KeyboardInterrupt  # as a kill would: rows at 2048 and 4096 are logged, no checkpoint yet

    monkeypatch.setattr(loop_module._TrainingLoop, "_checkpoint", crash_at_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_run(crashed, log=lambda *_: None)
    assert len(metrics_without_timing(Path(crashed.out_dir))) == 3 and not list_checkpoints(Path(crashed.out_dir))
    with open(Path(crashed.out_dir) / "metrics.jsonl", "a") as handle:
        handle.write('{"tokens_seen": 81')  # and a line torn by the kill
    monkeypatch.setattr(loop_module._TrainingLoop, "_checkpoint", real_checkpoint)
    train_run(crashed, log=lambda *_: None)
    assert metrics_without_timing(Path(crashed.out_dir)) == metrics_without_timing(Path(reference.out_dir))


def test_ladder_losses_fall_with_budget(tmp_path: Path, corpus: Path) -> None:
    budgets = [2048, 4096, 8192, 16384, 32768]
    config = tiny_pretrain_config(tmp_path, corpus, f"ladder.budgets_tokens={budgets}", "train.warmup_tokens=512")
    results = run_ladder(config, log=lambda *_: None)
    assert [r.tokens_seen for r in results] == budgets
    losses = [r.final_heldout_loss for r in results]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_wsd_branch_equals_a_standalone_wsd_run(tmp_path: Path, corpus: Path) -> None:
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    ladder = tiny_pretrain_config(tmp_path / "ladder", corpus, "ladder.mode=wsd-branches", "ladder.budgets_tokens=[8192,16384]",
                                  "train.dtype=fp32", "train.warmup_tokens=512", cache)
    branch = [r for r in run_ladder(ladder, log=lambda *_: None) if r.tokens_seen == 8192][0]
    # the branch starts from the trunk's checkpoint at 6656 tokens (step 26 of 32), not from scratch ...
    assert branch.started_at_tokens == 6656 and branch.steps_trained == 32 - 26
    trunk_checkpoint = Path(ladder.out_dir) / "budget-000000016384" / "checkpoints" / "step-000026-tokens-6656"
    assert trunk_checkpoint.is_dir()
    # ... so its first loss is the trunk's weights at step 26 on the batch of step 26
    trunk_model, _ = load_model(trunk_checkpoint)
    data = open_token_data(next((tmp_path / "cache").iterdir()))
    inputs, targets = train_batch(data, 8, 32, 0, 26)
    with torch.no_grad():
        trunk_loss = float(torch.nn.functional.cross_entropy(trunk_model(inputs).float().flatten(0, 1), targets.flatten()))
    assert branch.first_step_loss == pytest.approx(trunk_loss, rel=1e-6)
    branch_rows = [json.loads(line) for line in (branch.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in branch_rows] == [32], "the branch logs only its own steps"
    alone = tiny_pretrain_config(tmp_path / "alone", corpus, "train.schedule=wsd", "train.max_tokens=8192",
                                 "train.dtype=fp32", "train.warmup_tokens=512", cache)
    alone_result = train_run(alone, log=lambda *_: None)
    expected = load_file(alone_result.final_checkpoint / "model.safetensors")
    actual = load_file(branch.final_checkpoint / "model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.slow
def test_two_process_ddp_follows_the_single_process_loss_curve(tmp_path: Path, corpus: Path) -> None:
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    single = tiny_pretrain_config(tmp_path / "one", corpus, "train.dtype=fp32", "train.eval_every_tokens=2048", cache)
    train_run(single, log=lambda *_: None)
    double = tiny_pretrain_config(tmp_path / "two", corpus, "train.dtype=fp32", "train.eval_every_tokens=2048", cache)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "overtrain", "pretrain", *_overrides_for(double)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]

    def curve(run: Path) -> list[tuple[int, float, float]]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["tokens_seen"], r["train_loss"], r["heldout_loss"]) for r in map(json.loads, lines)]

    one, two = curve(Path(single.out_dir)), curve(Path(double.out_dir))
    assert [t for t, _, _ in one] == [t for t, _, _ in two] == [2048, 4096, 6144, 8192]
    for (_, train_a, held_a), (_, train_b, held_b) in zip(one, two):
        assert train_a == pytest.approx(train_b, rel=1e-4)
        assert held_a == pytest.approx(held_b, rel=1e-4)


def test_corrupted_checkpoint_is_named_with_the_fix(tmp_path: Path, corpus: Path) -> None:
    config = tiny_pretrain_config(tmp_path, corpus)
    result = train_run(config, log=lambda *_: None)
    weights = result.final_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(OvertrainError, match="corrupted") as caught:
        train_run(config, log=lambda *_: None)
    assert str(result.final_checkpoint) in str(caught.value)
    with pytest.raises(OvertrainError, match="corrupted"):
        load_model(result.final_checkpoint)


def test_nan_after_a_checkpoint_stops_with_advice_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import overtrain.pretrain.loop as loop_module

    real_checkpoint = loop_module._TrainingLoop._checkpoint

    def checkpoint_then_poison(self, out_dir):
        real_checkpoint(self, out_dir)
        with torch.no_grad():  # a real NaN in the weights right after the first checkpoint
            self.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")

    monkeypatch.setattr(loop_module._TrainingLoop, "_checkpoint", checkpoint_then_poison)
    config = tiny_pretrain_config(tmp_path, corpus, "train.checkpoint_every_tokens=2048")
    with pytest.raises(OvertrainError, match=r"training diverged: training loss nan in step 9 \(after 2.05k tokens") as caught:
        train_run(config, log=lambda *_: None)
    assert "train.lr" in caught.value.fix and "keeps its checkpoint at 2.05k tokens" in caught.value.fix
    kept = list_checkpoints(Path(config.out_dir))
    assert [path.name for path in kept] == ["step-000008-tokens-2048"]
    assert not [p for p in (Path(config.out_dir) / "checkpoints").iterdir() if ".tmp-" in p.name]
    model, _ = load_model(kept[0])  # verified against its checksums
    assert all(torch.isfinite(param).all() for param in model.parameters())
    monkeypatch.setattr(loop_module._TrainingLoop, "_checkpoint", real_checkpoint)
    assert train_run(config, log=lambda *_: None).started_at_tokens == 2048  # and the run resumes from it


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["pretrain", f"out_dir={tmp_path}", "train.lrr=1"]) == 2
    assert cli_main(["pretrain", f"out_dir={tmp_path}", f"data.corpus={tmp_path / 'missing'}", f"data.cache_dir={tmp_path}"]) == 2
    error = capsys.readouterr().err
    assert "did you mean train.lr" in error and "Traceback" not in error
    assert "missing" in error
    assert not (tmp_path / "checkpoints").exists()


def test_dry_run_prints_token_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["pretrain", "model.preset=nano", "train.max_tokens=4e6", "--dry-run"]) == 0
    assert "plan: 976 steps of 4,096 tokens into runs/pretrain, compiled (torch.compile): train.compile=auto and 976 steps >= 500" in capsys.readouterr().out
    assert cli_main(["pretrain", "model.preset=nano", "train.max_tokens=1e6", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "eager (no torch.compile): train.compile=auto and 244 steps < 500" in out and "checkpoint_at_tokens" not in out.split("plan:")[1]
    # a checkpoint asked for between steps is written at the next one, and the plan says where
    assert cli_main(["pretrain", "model.preset=nano", "train.max_tokens=1e6", "train.checkpoint_at_tokens=[1e5,131072]", "--dry-run"]) == 0
    plan = capsys.readouterr().out.split("plan:")[1]
    assert "train.checkpoint_at_tokens between steps, written at the next step (4,096 tokens/step): 100,000 -> 102,400\n" in plan


def test_help_teaches_the_config_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["pretrain", "--help"])
    text = capsys.readouterr().out
    assert "train.*" in text and "max_tokens" in text and "--dry-run" in text


@pytest.mark.parametrize(
    "max_tokens, setting, world_size, compiled",
    [
        ("8e6", None, 1, True),  # the default, auto: 8M tokens / 4,096 per step = 1,953 steps
        ("1.6e6", None, 1, False),  # 390 steps: compiling would not pay from a cold cache
        ("8e6", None, 2, False),  # DDP: auto leaves it off
        ("8e6", "false", 1, False),
        ("4e5", "true", 1, True),
    ],
)
def test_auto_compiles_single_process_runs_long_enough_to_pay(max_tokens: str, setting: str | None, world_size: int, compiled: bool) -> None:
    from overtrain.pretrain.config import load_pretrain_config
    from overtrain.pretrain.loop import should_compile

    overrides = ["model.preset=nano", "train.batch_size=32", "train.seq_len=128", f"train.max_tokens={max_tokens}"]
    config = load_pretrain_config(None, overrides + ([f"train.compile={setting}"] if setting else []))
    assert should_compile(config.train, world_size) is compiled


def test_the_demo_and_study_recipes_stay_eager() -> None:
    """Their published numbers and stored job keys are eager: the compile default must not change them."""
    from overtrain.sweep.config import load_sweep_config

    root = Path(__file__).resolve().parents[1]
    recipes = [root / "src/overtrain/recipes/demo.yaml", *sorted((root / "configs").glob("*/*.yaml"))]
    sweeps = [path for path in recipes if "pretrain:" in path.read_text() and "paper" not in path.parts]
    assert len(sweeps) >= 8
    for path in sweeps:
        assert load_sweep_config(path, []).pretrain.train.compile is False, path


def test_compiled_run_paused_and_resumed_equals_the_uninterrupted_one_and_tracks_eager(tmp_path: Path, corpus: Path) -> None:
    """The compiled path (torch.compile, and on one CPU thread overtrain's kernels: attention with the rotary
    embedding inside after the stacked q/k/v product, the output layer fused with the loss, and where the
    products are torch's BLAS the attention block and the MLP in blocks of rows) trains what the eager path
    trains, to float rounding;
    and since ``auto`` decides by the run's whole length, a run paused and resumed compiles both times and
    ends bitwise where the uninterrupted run ends."""
    settings = ("train.max_tokens=8192", "train.compile=true", "train.dtype=fp32", f"data.cache_dir={tmp_path / 'cache'}")
    whole = train_run(tiny_pretrain_config(tmp_path / "whole", corpus, *settings), log=lambda *_: None, show_progress=False)
    paused = tiny_pretrain_config(tmp_path / "paused", corpus, *settings)
    train_run(paused, log=lambda *_: None, stop_at_tokens=4096, show_progress=False)
    resumed = train_run(paused, log=lambda *_: None, show_progress=False)
    expected = load_file(whole.final_checkpoint / "model.safetensors")
    actual = load_file(resumed.final_checkpoint / "model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)

    eager_settings = (*settings[:1], "train.compile=false", *settings[2:])
    eager = train_run(tiny_pretrain_config(tmp_path / "eager", corpus, *eager_settings), log=lambda *_: None, show_progress=False)
    assert eager.final_heldout_loss == pytest.approx(whole.final_heldout_loss, rel=1e-4)
    eager_weights = load_file(eager.final_checkpoint / "model.safetensors")
    assert not all(torch.equal(expected[name], eager_weights[name]) for name in expected), "bitwise eager: nothing was compiled"


def test_a_resumed_run_keeps_the_product_library_it_started_with(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library is chosen by timing at the start of a run; the checkpoint keeps the choice, and a resume on
    which the timing would choose the other library keeps it all the same (they round differently), ending
    bitwise where the uninterrupted run ends."""
    from overtrain.checkpoints.folder import read_checkpoint_info
    from overtrain.model.cpu_kernels import kernel_library
    from overtrain.model.cpu_linear import ProductTiming, onednn_available

    if not onednn_available() or kernel_library() is None:
        pytest.skip("needs oneDNN and the CPU kernels")

    def timing(onednn_faster: bool):
        return lambda *shape: ProductTiming(shape[:3], shape[3], 2.0 if onednn_faster else 1.0, 1.0)

    settings = ("train.max_tokens=8192", "train.compile=true", "train.dtype=fp32", f"data.cache_dir={tmp_path / 'cache'}")
    monkeypatch.setattr("overtrain.model.llama.time_products", timing(onednn_faster=True))
    whole = train_run(tiny_pretrain_config(tmp_path / "whole", corpus, *settings), log=lambda *_: None, show_progress=False)
    paused, first_log, second_log = tiny_pretrain_config(tmp_path / "paused", corpus, *settings), [], []
    train_run(paused, log=first_log.append, stop_at_tokens=4096, show_progress=False)
    checkpoint = list_checkpoints(paused.out_dir)[-1]
    assert read_checkpoint_info(checkpoint).loop_state["products_library"] == "onednn"
    monkeypatch.setattr("overtrain.model.llama.time_products", timing(onednn_faster=False))
    resumed = train_run(paused, log=second_log.append, show_progress=False)
    assert any(line.startswith("products by oneDNN: oneDNN's whole products measured 2.00x torch's BLAS") for line in first_log)
    assert "products by oneDNN, as in the checkpoint this run continues from (with the same version of overtrain, its numerics continue unchanged)" in second_log
    expected = load_file(whole.final_checkpoint / "model.safetensors")
    actual = load_file(resumed.final_checkpoint / "model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_pinned_product_library_is_not_timed_and_the_checkpoint_names_it(tmp_path: Path, corpus: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """train.cpu_products=blas makes every fresh run round alike (no timing); the checkpoint names the library,
    and a resume at ``auto`` keeps it and continues bitwise."""
    from overtrain.checkpoints.folder import read_checkpoint_info

    def no_timing(*shape):
        raise AssertionError("a pinned library, or one a checkpoint names, is not timed")

    monkeypatch.setattr("overtrain.model.llama.time_products", no_timing)
    monkeypatch.setattr("overtrain.pretrain.loop.kernel_library_needs_building", lambda: True)  # a machine that never built them
    settings = ("train.max_tokens=8192", "train.compile=true", "train.dtype=fp32")
    pinned, log = tiny_pretrain_config(tmp_path, corpus, *settings, "train.cpu_products=blas"), []
    train_run(pinned, log=log.append, stop_at_tokens=4096, show_progress=False)
    assert "building overtrain's CPU kernels (once per machine and torch version; ~40 s on two cores)" in log  # before the wait
    assert "products by torch's BLAS, as train.cpu_products=blas pins" in log
    assert read_checkpoint_info(list_checkpoints(pinned.out_dir)[-1]).loop_state["products_library"] == "blas"
    log = []
    train_run(tiny_pretrain_config(tmp_path, corpus, *settings), log=log.append, show_progress=False)
    assert "products by torch's BLAS, as in the checkpoint this run continues from (with the same version of overtrain, its numerics continue unchanged)" in log


def test_a_pin_that_differs_from_the_checkpoint_is_taken_and_said(tmp_path: Path, corpus: Path) -> None:
    """Like train.compile, the library may change between invocations of a run (the math is the same); the
    log says that the losses continue within rounding only, and the checkpoints then name the new one."""
    from overtrain.checkpoints.folder import read_checkpoint_info
    from overtrain.model.cpu_linear import onednn_available

    if not onednn_available():
        pytest.skip("needs oneDNN")
    settings = ("train.max_tokens=8192", "train.compile=true", "train.dtype=fp32")
    train_run(tiny_pretrain_config(tmp_path, corpus, *settings, "train.cpu_products=blas"), log=lambda *_: None,
              stop_at_tokens=4096, show_progress=False)
    switched, log = tiny_pretrain_config(tmp_path, corpus, *settings, "train.cpu_products=onednn"), []
    train_run(switched, log=log.append, show_progress=False)
    assert ("products by oneDNN, as train.cpu_products=onednn pins: the checkpoint this run continues from made them by "
            "torch's BLAS (the losses continue within float rounding, not bitwise)") in log
    assert read_checkpoint_info(list_checkpoints(switched.out_dir)[-1]).loop_state["products_library"] == "onednn"


def test_brgemm_pinned_where_the_kernels_cannot_call_it_is_refused_before_anything_is_written(tmp_path: Path, corpus: Path,
                                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("overtrain.pretrain.loop.block_products", lambda library: None)
    config = tiny_pretrain_config(tmp_path, corpus, "train.max_tokens=4096", "train.compile=true", "train.dtype=fp32",
                                  "train.cpu_products=brgemm")
    with pytest.raises(OvertrainError, match="train.cpu_products=brgemm, but overtrain's blocked kernels cannot call") as refused:
        train_run(config, log=lambda *_: None, show_progress=False)
    assert "set train.cpu_products=auto or blas" in str(refused.value)
    assert not Path(config.out_dir).exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_brgemm_pinned_makes_the_blocked_kernels_products_and_the_checkpoint_names_it(tmp_path: Path, corpus: Path,
                                                                                     asked_block_libraries) -> None:
    """A run pinned to oneDNN's brgemm micro-kernel takes it in every blocked kernel of the compiled step
    (what each op asked for is recorded), logs so, and its checkpoint names it; its losses match a run by
    torch's BLAS to float rounding."""
    from overtrain.checkpoints.folder import read_checkpoint_info
    from overtrain.model import cpu_kernels

    if not cpu_kernels.kernel_available() or cpu_kernels.block_products("brgemm") is None:
        pytest.skip("needs the CPU kernels and oneDNN's brgemm micro-kernel")
    settings = ("train.max_tokens=8192", "train.compile=true", "train.dtype=fp32", f"data.cache_dir={tmp_path / 'cache'}")
    results, logs = {}, {}
    for library in ("brgemm", "blas"):
        asked_block_libraries.clear()
        config, logs[library] = tiny_pretrain_config(tmp_path / library, corpus, *settings, f"train.cpu_products={library}"), []
        results[library] = train_run(config, log=logs[library].append, show_progress=False)
        assert set(asked_block_libraries.counts()) == {library}
        assert {kernel for kernel, _ in asked_block_libraries.by_kernel()} == set(cpu_kernels.BLOCKED_KERNELS)  # each, forward and backward
        checkpoint = list_checkpoints(config.out_dir)[-1]
        assert read_checkpoint_info(checkpoint).loop_state["products_library"] == library
    assert "products by oneDNN's brgemm micro-kernel, as train.cpu_products=brgemm pins" in logs["brgemm"]
    assert results["brgemm"].final_heldout_loss == pytest.approx(results["blas"].final_heldout_loss, abs=1e-4)


def test_brgemm_pinned_for_a_run_of_several_threads_is_refused(tmp_path: Path, corpus: Path) -> None:
    """The blocked kernels run on one thread: a brgemm pin with more would silently make no brgemm product."""
    config = tiny_pretrain_config(tmp_path, corpus, "train.max_tokens=4096", "train.compile=true", "train.dtype=fp32",
                                  "train.cpu_products=brgemm", "train.threads=2")
    with pytest.raises(OvertrainError, match="run on one thread, and this run would use 2") as refused:
        train_run(config, log=lambda *_: None, show_progress=False)
    assert "set train.threads=1" in str(refused.value) and not Path(config.out_dir).exists()
    eager = tiny_pretrain_config(tmp_path, corpus, "train.max_tokens=4096", "train.compile=false", "train.cpu_products=brgemm",
                                 "train.threads=2")
    _refuse_unusable_products_pin(eager, torch.device("cpu"), 1)  # an eager run ignores the pin: nothing to refuse


def test_onednn_pinned_where_torch_cannot_use_it_is_refused_before_anything_is_written(tmp_path: Path, corpus: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("overtrain.pretrain.loop.onednn_available", lambda: False)
    settings = ("train.max_tokens=4096", "train.compile=true", "train.dtype=fp32")
    config = tiny_pretrain_config(tmp_path, corpus, *settings, "train.cpu_products=onednn")
    with pytest.raises(OvertrainError, match="train.cpu_products=onednn, but this torch cannot make products with oneDNN") as refused:
        train_run(config, log=lambda *_: None, show_progress=False)
    assert "set train.cpu_products=auto or blas" in str(refused.value)
    assert not Path(config.out_dir).exists()
    log = []  # the fix, as given, in the same out_dir
    train_run(tiny_pretrain_config(tmp_path, corpus, *settings, "train.cpu_products=blas"), log=log.append, show_progress=False)
    assert "products by torch's BLAS, as train.cpu_products=blas pins" in log


def test_the_log_names_a_checkpoints_library_that_torch_cannot_use_here(tmp_path: Path, corpus: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose checkpoint made its products by oneDNN, resumed where torch has none: torch's BLAS, said."""
    from overtrain.checkpoints.folder import read_checkpoint_info
    from overtrain.model.cpu_linear import onednn_available

    if not onednn_available():
        pytest.skip("needs oneDNN for the first half")
    settings = ("train.max_tokens=8192", "train.compile=true", "train.dtype=fp32")
    train_run(tiny_pretrain_config(tmp_path, corpus, *settings, "train.cpu_products=onednn"), log=lambda *_: None,
              stop_at_tokens=4096, show_progress=False)
    monkeypatch.setattr("overtrain.model.llama.onednn_available", lambda: False)
    config, log = tiny_pretrain_config(tmp_path, corpus, *settings), []
    train_run(config, log=log.append, show_progress=False)
    assert ("products by torch's BLAS: the checkpoint this run continues from made them by oneDNN, which this machine's "
            "torch cannot use (the losses continue within float rounding, not bitwise)") in log
    assert read_checkpoint_info(list_checkpoints(config.out_dir)[-1]).loop_state["products_library"] == "blas"


def test_an_eager_run_names_no_product_library_in_its_checkpoints(tmp_path: Path, corpus: Path) -> None:
    from overtrain.checkpoints.folder import read_checkpoint_info

    config = tiny_pretrain_config(tmp_path, corpus, "train.max_tokens=4096", "train.compile=false", "train.cpu_products=blas")
    train_run(config, log=lambda *_: None, show_progress=False)
    assert read_checkpoint_info(list_checkpoints(config.out_dir)[-1]).loop_state["products_library"] is None


def test_cpu_products_is_left_out_of_stored_configs_at_its_default(tmp_path: Path, corpus: Path) -> None:
    """Added after runs were stored: at ``auto`` the resolved config (and so every stored job's key) is what
    it was; a pin is part of it; an unknown library is refused with the choices."""
    from overtrain.config import config_to_dict

    assert "cpu_products" not in config_to_dict(tiny_pretrain_config(tmp_path, corpus))["train"]
    assert config_to_dict(tiny_pretrain_config(tmp_path, corpus, "train.cpu_products=blas"))["train"]["cpu_products"] == "blas"
    with pytest.raises(OvertrainError, match="cpu_products"):
        tiny_pretrain_config(tmp_path, corpus, "train.cpu_products=mkl")


def test_the_ladder_dry_run_says_which_runs_compile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "nano_ladder.yaml"
    overrides = [f"out_dir={tmp_path / 'ladder'}", f"data.cache_dir={tmp_path / 'cache'}", "ladder.budgets_tokens=[1e6,4e6]"]
    assert cli_main(["pretrain-ladder", str(config), *overrides, "--dry-run"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if " steps " in line and "->" in line}
    assert " eager " in lines["1M"] and " compiled " in lines["4M"]  # 244 and 976 steps under train.compile=auto
    assert cli_main(["pretrain-ladder", str(config), *overrides, "train.compile=false", "--dry-run"]) == 0
    assert " compiled " not in capsys.readouterr().out
    assert not (tmp_path / "ladder").exists()


def test_weights_broken_by_a_step_whose_own_loss_was_finite_stop_at_the_evaluation(tmp_path: Path, corpus: Path) -> None:
    """An LR so large that one step leaves NaN weights: that step's training loss is still finite, the held-out
    loss after it is not, and the run stops there (at the LR that broke it), with no NaN written to its metrics."""
    config = tiny_pretrain_config(tmp_path, corpus, "train.lr=1e6", "train.grad_clip=0", "train.warmup_tokens=256",
                                  "train.eval_every_tokens=256")  # every step
    with pytest.raises(OvertrainError, match=r"training diverged: held-out loss nan after step \d+") as caught:
        train_run(config, log=lambda *_: None)
    assert "kept no checkpoint before diverging" in caught.value.fix
    metrics = Path(config.out_dir) / "metrics.jsonl"
    assert not metrics.exists() or all(math.isfinite(json.loads(line)["heldout_loss"]) for line in metrics.read_text().splitlines())


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(corpus: Path, tmp_path: Path) -> None:
    """Two `overtrain pretrain` on one out_dir would both write its checkpoints and interleave metrics.jsonl:
    the second is refused before it reads or writes anything, and the folder trains once the holder is gone."""
    config = tiny_pretrain_config(tmp_path, corpus)
    hold = ("import sys, time; from overtrain.pretrain.loop import run_lock\n"
            "with run_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, config.out_dir], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with pytest.raises(OvertrainError, match=f"another process is training the run in .*pid {holder.pid} on host"):
            train_run(config, log=lambda *_: None, show_progress=False)
        assert [path.name for path in Path(config.out_dir).iterdir()] == ["run.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    result = train_run(config, log=lambda *_: None, show_progress=False)  # the dead holder's lock is released
    assert result.tokens_seen == config.train.max_tokens
