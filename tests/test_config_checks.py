"""Config-level checks found by a CLI fuzz: nothing the user set is silently dropped, repeated or capped,
and every message names an existing example, the exact key and a fix that can work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import tiny_pretrain_config, write_stdlib_text_corpus

from overtrain.atomic import ensure_writable_folder
from overtrain.cli import main as cli_main
from overtrain.config import read_yaml
from overtrain.data.config import DataConfig
from overtrain.data.tokens import heldout_windows, prepare_token_data
from overtrain.errors import OvertrainError
from overtrain.pretrain.config import load_pretrain_config, validate_pretrain_config
from overtrain.pretrain.ladder import plan_ladder
from overtrain.pretrain.loop import train_run
from overtrain.results.store import ResultStore
from overtrain.sweep.config import load_sweep_config

REPO = Path(__file__).resolve().parents[1]
SWEEP_DEMO = REPO / "configs" / "demo" / "sweep_small.yaml"
SMALL_RUN = ["train.max_tokens=20000", "train.warmup_tokens=1000"]  # 4,096 tokens per step: 4 steps, 16,384 tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_text_corpus(tmp_path_factory.mktemp("corpus"), documents=12)


def test_repeated_ladder_budgets_are_refused_as_repeated_gammas_are() -> None:
    for load, override in ((lambda o: load_pretrain_config(None, o), "ladder.budgets_tokens=[500000,500000]"),
                           (lambda o: load_sweep_config(SWEEP_DEMO, o), "pretrain.ladder.budgets_tokens=[500000,500000]")):
        with pytest.raises(OvertrainError, match=re.escape("ladder.budgets_tokens=[500000, 500000] repeats a value")) as caught:
            load([override])
        assert caught.value.fix == f"list each value of {override.split('=')[0]} once"  # the key as that verb's user writes it


def test_ladder_budgets_that_train_the_same_number_of_steps_are_refused() -> None:
    """4,096 tokens a step: 37,000 and 40,000 both train 9 steps (36,864 tokens), the same run twice; 45,000
    (10 steps) is another run."""
    for load, prefix in ((lambda o: load_pretrain_config(None, o), ""), (lambda o: load_sweep_config(SWEEP_DEMO, o), "pretrain.")):
        with pytest.raises(OvertrainError, match=re.escape("37,000, 40,000 both train 9 steps of 4,096 tokens (36,864 tokens)")) as caught:
            load([f"{prefix}train.warmup_tokens=1000", f"{prefix}train.batch_size=32", f"{prefix}train.seq_len=128",
                  f"{prefix}ladder.budgets_tokens=[37000,40000,45000]"])
        assert caught.value.fix == "give budgets at least one step (4,096 tokens) apart"
    assert load_pretrain_config(None, ["train.warmup_tokens=1000", "ladder.budgets_tokens=[40000,45000]"]).ladder.budgets_tokens == [40000, 45000]


def test_checkpoints_past_the_end_of_the_run_or_repeated_are_refused() -> None:
    with pytest.raises(OvertrainError) as caught:
        load_pretrain_config(None, [*SMALL_RUN, "train.checkpoint_at_tokens=[30000]"])
    assert "train.checkpoint_at_tokens holds 30,000, after the end of the run: train.max_tokens = 20,000" in caught.value.problem
    assert "raise train.max_tokens" in caught.value.fix
    # within max_tokens but after the last whole step (16,384): rounded up to 20,480, it would never be written either
    with pytest.raises(OvertrainError, match="holds 18,000, after the end of the run"):
        load_pretrain_config(None, [*SMALL_RUN, "train.checkpoint_at_tokens=[18000]"])
    with pytest.raises(OvertrainError, match=re.escape("train.checkpoint_at_tokens=[5000, 5000] repeats a value")):
        load_pretrain_config(None, [*SMALL_RUN, "train.checkpoint_at_tokens=[5000,5000]"])
    assert load_pretrain_config(None, [*SMALL_RUN, "train.checkpoint_at_tokens=[8192,16384]"]).train.checkpoint_at_tokens == [8192, 16384]


def test_a_ladder_checks_its_checkpoints_against_its_largest_budget_and_its_rungs_still_run() -> None:
    ladder = ["train.warmup_tokens=1000", "ladder.budgets_tokens=[8192,16384]"]
    config = load_pretrain_config(None, [*ladder, "train.checkpoint_at_tokens=[12288]"])
    rungs = plan_ladder(config)
    for rung in rungs:  # the 8,192-token rung skips the checkpoint at 12,288; train_run validates each rung like this
        validate_pretrain_config(rung.config)
    assert [rung.config.train.checkpoint_at_tokens for rung in rungs] == [[12288], [12288]]
    with pytest.raises(OvertrainError, match="holds 40,000, after the end of the run: the largest ladder.budgets_tokens = 16,384") as caught:
        load_pretrain_config(None, [*ladder, "train.checkpoint_at_tokens=[40000]"])
    assert "raise ladder.budgets_tokens" in caught.value.fix


def test_a_key_given_twice_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OvertrainError, match=re.escape("setting train.lr is given twice on the command line ('train.lr=1e-3' and 'train.lr=2e-3')")):
        load_pretrain_config(None, ["train.lr=1e-3", "train.lr=2e-3"])
    assert cli_main(["pretrain", "train.lr=1e-3", "model.preset=nano", "train.lr=2e-3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.lr is given twice" in err and "give train.lr once" in err and "Traceback" not in err
    assert load_pretrain_config(None, ["train.lr=1e-3", "train.seed=3"]).train.lr == 1e-3  # different keys: both apply


def test_the_missing_config_file_message_names_an_example_that_exists(tmp_path: Path) -> None:
    with pytest.raises(OvertrainError) as caught:
        read_yaml(tmp_path / "nope.yaml")
    (example,) = re.findall(r"configs/demo/\S+\.yaml", caught.value.fix)
    assert (REPO / example).is_file(), example


def test_an_unknown_key_is_named_plainly_in_whole_sentences() -> None:
    with pytest.raises(OvertrainError) as caught:
        load_pretrain_config(None, ["model.bogus=1"])
    assert caught.value.problem == "unknown config key model.bogus"
    assert caught.value.fix.startswith("remove model.bogus. Known keys here: d_ff, d_model, ") and caught.value.fix.endswith(".")
    with pytest.raises(OvertrainError) as caught:
        load_pretrain_config(None, ["train.lrr=1"])
    assert caught.value.fix.startswith("did you mean train.lr? Known keys here: ")


def test_a_regular_file_in_the_way_of_a_folder_is_named_with_a_fix_that_can_work(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    for folder in (blocker, blocker / "run", blocker / "run" / "deeper"):
        with pytest.raises(OvertrainError) as caught:
            ensure_writable_folder(folder, "the run folder", "out_dir")
        assert f"cannot write to the run folder {folder}: {blocker} is a file, not a folder" in caught.value.problem
        assert "set out_dir to another folder" in caught.value.fix and "chmod" not in caught.value.fix
    for store in (blocker / "results.sqlite", blocker / "sweep" / "results.sqlite"):
        with pytest.raises(OvertrainError) as caught:
            ResultStore(store)
        assert f"{blocker} is a file, not a folder" in caught.value.problem
        assert "another folder" in caught.value.fix and "writable" not in caught.value.fix
    assert blocker.read_text() == "not a folder" and [path.name for path in tmp_path.iterdir()] == ["afile"]


def test_a_store_path_that_is_a_folder_gets_a_fix_that_is_not_a_nested_store(tmp_path: Path) -> None:
    taken = tmp_path / "results.sqlite"
    taken.mkdir()
    with pytest.raises(OvertrainError, match="is a folder, not a file") as caught:
        ResultStore(taken)
    assert "results.sqlite/results.sqlite" not in caught.value.fix
    assert f"move the folder {taken} aside" in caught.value.fix and "another folder" in caught.value.fix


def test_pretrain_help_lists_train_extend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["pretrain", "--help"])
    printed = capsys.readouterr().out
    assert "  train.extend=false\n" in printed and "Continue an existing run" in printed


def test_a_corpus_that_cannot_be_read_leaves_no_cache_folder(tmp_path: Path) -> None:
    cache = tmp_path / "runs" / "cache"
    with pytest.raises(OvertrainError, match="nonexistent_dataset_xyz"):
        prepare_token_data(DataConfig(corpus="hf:nonexistent_dataset_xyz", cache_dir=str(cache)), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []  # neither runs/cache nor runs/ was left behind


def test_a_run_says_when_it_evaluates_on_fewer_tokens_than_asked(tmp_path: Path, corpus: Path) -> None:
    tiny = ["train.max_tokens=512", "train.warmup_tokens=0", "train.eval_every_tokens=512"]  # two steps of 8 x 32 tokens
    lines: list[str] = []
    capped = tiny_pretrain_config(tmp_path / "capped", corpus, *tiny, "train.eval_tokens=100000000", f"data.cache_dir={tmp_path / 'cache'}")
    train_run(capped, log=lines.append, show_progress=False)
    data = prepare_token_data(capped.data, log=lambda *_: None)
    evaluated = heldout_windows(data, 100_000_000, 32)[1].numel()
    assert 0 < evaluated < len(data.heldout) < 100_000_000
    assert (f"held-out loss is measured on {evaluated:,} tokens, fewer than train.eval_tokens=100,000,000: "
            f"the held-out split holds only {len(data.heldout):,} tokens") in "\n".join(lines)
    lines.clear()
    enough = tiny_pretrain_config(tmp_path / "enough", corpus, *tiny, "train.eval_tokens=100", f"data.cache_dir={tmp_path / 'cache'}")
    train_run(enough, log=lines.append, show_progress=False)
    assert lines and not any("held-out loss is measured on" in line for line in lines)  # 100 rounds down to 3 windows: no cap


def test_settings_may_follow_an_option_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["pretrain", "configs/demo/nano.yaml", "--dry-run", f"out_dir={tmp_path / 'run'}", "train.max_tokens=409600"]) == 0
    printed = capsys.readouterr().out
    assert f"plan: 100 steps of 4,096 tokens into {tmp_path / 'run'}" in printed
    with pytest.raises(SystemExit):  # an unknown option is still argparse's error
        cli_main(["pretrain", "configs/demo/nano.yaml", "--dry-run", "--bogus"])


def test_a_sweep_refuses_the_one_run_instruction_train_extend(tmp_path: Path) -> None:
    from overtrain.sweep.config import load_sweep_config

    with pytest.raises(OvertrainError, match="a sweep's pre-training jobs are keyed by their settings and are never extended"):
        load_sweep_config("configs/demo/sweep_small.yaml", [f"out_dir={tmp_path}", "pretrain.train.extend=true"])
    assert load_sweep_config("configs/demo/sweep_small.yaml", [f"out_dir={tmp_path}"]).pretrain.train.extend is False


def test_a_head_count_is_blamed_for_what_it_breaks_and_nothing_else() -> None:
    from overtrain.pretrain.config import load_pretrain_config

    with pytest.raises(OvertrainError) as not_a_divisor:
        load_pretrain_config(None, ["model.d_model=64", "model.n_heads=3"])
    assert str(not_a_divisor.value).splitlines()[0] == "model.n_heads=3 is invalid"  # not d_model as well
    with pytest.raises(OvertrainError, match=r"model.d_model / model.n_heads = 64 / 64 = 1 is odd"):
        load_pretrain_config(None, ["model.d_model=64", "model.n_heads=64"])


def test_max_tokens_given_to_a_ladder_is_refused_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ladder trains one run to each budget: train.max_tokens on its command line would be shown in the
    resolved config and never used. In the file beside the budgets it is a run config reused, and allowed."""
    ladder = ["train.warmup_tokens=1000", "ladder.budgets_tokens=[20000,40000]", f"out_dir={tmp_path / 'ladder'}"]
    assert cli_main(["pretrain-ladder", *ladder, "train.max_tokens=50000", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.max_tokens=50000 is given, but a ladder trains one run to each of ladder.budgets_tokens" in err
    assert "fix: remove train.max_tokens" in err
    with pytest.raises(OvertrainError, match=re.escape("pretrain.train.max_tokens=50000 is given, but a ladder trains")):
        load_sweep_config(SWEEP_DEMO, ["pretrain.train.warmup_tokens=1000", "pretrain.train.max_tokens=50000"])
    assert cli_main(["pretrain-ladder", *ladder, "--dry-run"]) == 0  # the default max_tokens: fine
    assert load_pretrain_config(None, ["train.warmup_tokens=1000", "train.max_tokens=50000"]).train.max_tokens == 50000


def test_a_schedule_given_to_a_wsd_ladder_is_refused_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ladder.mode=wsd-branches trains WSD whatever train.schedule says: a schedule on its command line would be
    shown in the resolved config and never used. The file's (default) schedule, or wsd itself, is fine."""
    ladder = ["train.warmup_tokens=1000", "ladder.budgets_tokens=[20000,40000]", "ladder.mode=wsd-branches", f"out_dir={tmp_path / 'ladder'}"]
    assert cli_main(["pretrain-ladder", *ladder, "train.schedule=linear", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.schedule=linear is given, but ladder.mode=wsd-branches trains a warmup-stable-decay trunk" in err
    assert "fix: remove train.schedule (or set ladder.mode=cosine-per-budget" in err
    with pytest.raises(OvertrainError, match=re.escape("pretrain.train.schedule=constant is given, but pretrain.ladder.mode=wsd-branches")):
        load_sweep_config(SWEEP_DEMO, ["pretrain.train.warmup_tokens=1000", "pretrain.train.schedule=constant"])
    assert cli_main(["pretrain-ladder", *ladder, "--dry-run"]) == 0
    assert cli_main(["pretrain-ladder", *ladder, "train.schedule=wsd", "--dry-run"]) == 0
    capsys.readouterr()


def test_a_sweep_spec_given_to_pretrain_is_named_as_one() -> None:
    with pytest.raises(OvertrainError, match="this is a sweep spec, not a pre-training config: it has pretrain") as caught:
        load_pretrain_config(SWEEP_DEMO, [])
    assert "overtrain sweep" in caught.value.fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_the_pretrain_dry_runs_refuse_what_their_runs_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """device=cuda without a GPU: the dry runs exited 0 and the runs 2."""
    base = ["train.warmup_tokens=1000", f"out_dir={tmp_path / 'run'}"]
    for verb, extra in (("pretrain", []), ("pretrain-ladder", ["ladder.budgets_tokens=[20000]"])):
        assert cli_main([verb, *base, *extra, "device=cuda", "--dry-run"]) == 2
        assert "device=cuda was asked for but torch sees no GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("corpus", ["embedded", "notes.TXT"])
def test_a_text_field_set_on_plain_text_changes_no_cache_key(corpus: str, tmp_path: Path) -> None:
    """Plain text has no record fields: the setting changes no document, so it must not tokenize the corpus again."""
    from overtrain.data.tokens import data_cache_key, shard_cache_key

    plain, with_field = DataConfig(corpus=corpus), DataConfig(corpus=corpus, text_field="content")
    assert data_cache_key(with_field) == data_cache_key(plain)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert shard_cache_key(with_field, tmp_path) == shard_cache_key(plain, tmp_path)
    records, records_with_field = DataConfig(corpus="records.jsonl"), DataConfig(corpus="records.jsonl", text_field="content")
    assert data_cache_key(records_with_field) != data_cache_key(records)  # where fields exist, the field is part of the key


def test_a_sweep_dry_run_refuses_a_corpus_its_pretraining_jobs_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    for extra in (["--dry-run"], []):
        code = cli_main(["sweep", str(SWEEP_DEMO), f"out_dir={out}", f"pretrain.data.corpus={empty}", *extra])
        error = capsys.readouterr().err
        assert code == 2 and f"the corpus {str(empty)!r} has no documents" in error
    assert not out.exists()  # refused before the store was opened


def test_a_sweep_dry_run_refuses_a_sharpness_group_that_matches_no_tensor_of_the_models_it_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["sweep", str(SWEEP_DEMO), f"out_dir={tmp_path / 'out'}", "sharpness.kinds=[hessian_trace]", "--dry-run"]
    assert cli_main([*common, 'sharpness.groups=[attention,"*layers.1.mlp*"]']) == 0  # the demo's models have 2 layers
    capsys.readouterr()
    assert cli_main([*common, 'sharpness.groups=[attention,"*layers.2.mlp*"]']) == 2
    assert "sharpness group '*layers.2.mlp*' matches no tensor of 3 model(s) of this sweep" in capsys.readouterr().err


def test_the_sections_that_mark_a_sweep_spec_are_the_sweeps_own() -> None:
    """pretrain/config.py names the sweep's sections without importing the sweep (which imports it): kept in step here."""
    import dataclasses

    from overtrain.pretrain.config import PretrainConfig, SWEEP_SPEC_SECTIONS
    from overtrain.sweep.config import SweepConfig

    shared_with_a_run = {field.name for field in dataclasses.fields(PretrainConfig)}
    only_a_sweeps = {field.name for field in dataclasses.fields(SweepConfig)} - shared_with_a_run - {"eval_data", "report"}
    assert set(SWEEP_SPEC_SECTIONS) == only_a_sweeps


def test_a_sweeps_pretraining_problems_name_their_keys_with_pretrain_before_them() -> None:
    """Free-text problems (not only key=value ones) name keys as a sweep's user writes them."""
    with pytest.raises(OvertrainError) as refused:
        load_sweep_config(str(SWEEP_DEMO), ["pretrain.ladder.budgets_tokens=[500000,500000]", "pretrain.train.checkpoint_at_tokens=[100,100]"])
    text = f"{refused.value.problem}\n{refused.value.fix}"
    assert "pretrain.ladder.budgets_tokens=[500000, 500000] repeats a value" in text
    assert "pretrain.train.checkpoint_at_tokens=[100, 100] repeats a value" in text and "pretrain.pretrain." not in text
    assert " ladder.budgets_tokens" not in text.replace("pretrain.ladder", "")


def test_a_problem_in_one_sweep_section_does_not_hide_the_fine_tuning_grids_problems() -> None:
    with pytest.raises(OvertrainError) as refused:
        load_sweep_config(str(SWEEP_DEMO), ["noise.gammas=[-1]", "finetune.lrs=[-1]"])
    assert "noise.gammas holds -1.0" in refused.value.problem and "finetune.lr=-1.0 is invalid" in refused.value.problem


@pytest.mark.parametrize("override", ["train..lr=5", ".train.lr=5", "train.lr.=5"])
def test_an_override_key_with_an_empty_part_is_refused_not_read_as_the_key_it_resembles(override: str) -> None:
    with pytest.raises(OvertrainError, match="has an empty part in its key") as caught:
        load_pretrain_config(None, [override])
    assert "e.g. train.lr=5" in caught.value.fix


def test_a_setting_of_several_kinds_names_every_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OvertrainError, match=re.escape("config key train.compile must be true, false or 'auto', got 'maybe'")):
        load_pretrain_config(None, ["train.compile=maybe"])
    (tmp_path / "a_file").write_text("x")
    assert cli_main(["pretrain", f"out_dir={tmp_path / 'a_file'}", "--dry-run"]) == 2  # the dry run says what the run would
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_config_file_after_the_overrides_and_a_bare_prefix_are_named_as_such(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "nano.yaml"
    with pytest.raises(OvertrainError, match="has no '='") as caught:
        load_pretrain_config(None, ["train.lr=1e-3", str(config)])
    assert "the config file goes first" in caught.value.fix
    with pytest.raises(OvertrainError, match="has no '='") as caught:
        load_pretrain_config(None, ["train.lr"])
    assert "dotted.key=value" in caught.value.fix
    with pytest.raises(OvertrainError, match="= 'file:' names nothing after the colon") as caught:
        load_pretrain_config(None, ["data.corpus=file:"])
    assert "file:PATH" in caught.value.fix
