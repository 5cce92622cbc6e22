"""Configs: YAML + dotted overrides, unknown keys and bad values rejected with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from overtrain.config import apply_overrides, parse_override
from overtrain.errors import OvertrainError
from overtrain.pretrain.config import load_pretrain_config
from overtrain.pretrain.ladder import plan_ladder
from overtrain.pretrain.schedules import lr_at, wsd_branch_start_tokens


def test_override_values_are_typed() -> None:
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 0.001)
    assert parse_override("train.max_tokens=1_000_000") == (["train", "max_tokens"], 1_000_000)
    assert parse_override("ladder.budgets_tokens=[1e6,2e6]") == (["ladder", "budgets_tokens"], [1e6, 2e6])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_a_list_override_that_is_not_yaml_is_refused_not_kept_as_one_string() -> None:
    """``groups=[all,*mlp*]`` (a YAML alias where a glob was meant) was the one string '[all,*mlp*]': its jobs
    all failed later with "matches no parameter". Quoted, it is the list; other text stays text."""
    for text in ("sharpness.groups=[all,*mlp*]", "ladder.budgets_tokens=[1e6,2e6", "a={b: 1"):
        with pytest.raises(OvertrainError, match="opens a list or mapping but is not valid YAML") as caught:
            parse_override(text)
        assert 'groups=["*mlp*",all]' in caught.value.fix
    assert parse_override('groups=["*mlp*",all]') == (["groups"], ["*mlp*", "all"])
    assert parse_override("name=run*2") == (["name"], "run*2")


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: nano}\ntrain: {max_tokens: 2e6, lr: 1e-3}\n")
    config = load_pretrain_config(path, ["train.lr=2e-3"])
    assert config.train.max_tokens == 2_000_000 and isinstance(config.train.max_tokens, int)
    assert config.train.lr == 2e-3
    assert config.model.d_model == 64  # from the preset


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(OvertrainError, match="did you mean train.lr"):
        load_pretrain_config(None, ["train.lrr=1e-3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_tokens=0", "train.max_tokens"),
        ("train.max_tokens=-5", "train.max_tokens"),
        ("train.max_tokens=100", "smaller than one optimizer step"),
        ("train.lr=fast", "must be a number"),
        ("train.batch_size=2.5", "whole number"),
        ("train.schedule=exponential", "use one of"),
        ("model.preset=huge", "unknown model preset"),
        ("train.warmup_tokens=5e6", "never anneal"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override: str, message: str) -> None:
    with pytest.raises(OvertrainError, match=message) as caught:
        load_pretrain_config(None, [override])
    assert caught.value.fix


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OvertrainError, match="does not exist"):
        load_pretrain_config(tmp_path / "nope.yaml")


def test_cosine_anneals_to_zero_at_the_budget() -> None:
    config = load_pretrain_config(None, ["train.max_tokens=409600", "train.warmup_tokens=40960"])
    train = config.train
    assert train.total_steps == 100
    assert lr_at(0, train) == pytest.approx(train.lr / 10)
    assert lr_at(9, train) == pytest.approx(train.lr)
    assert lr_at(train.total_steps - 1, train) == pytest.approx(0.0, abs=1e-12)
    assert all(lr_at(s, train) >= lr_at(s + 1, train) for s in range(10, 99))


def test_wsd_stable_phase_is_the_same_for_every_budget() -> None:
    short = load_pretrain_config(None, ["train.schedule=wsd", "train.max_tokens=409600", "train.warmup_tokens=40960"]).train
    long = load_pretrain_config(None, ["train.schedule=wsd", "train.max_tokens=819200", "train.warmup_tokens=40960"]).train
    branch_step = wsd_branch_start_tokens(short.max_tokens, short) // short.tokens_per_step
    assert branch_step == 80
    assert [lr_at(s, short) for s in range(branch_step)] == [lr_at(s, long) for s in range(branch_step)]
    assert lr_at(short.total_steps - 1, short) == pytest.approx(0.0, abs=1e-12)


def test_wsd_ladder_branches_from_the_trunk() -> None:
    config = load_pretrain_config(
        None, ["ladder.mode=wsd-branches", "ladder.budgets_tokens=[409600,819200,1638400]", "train.warmup_tokens=40960"]
    )
    rungs = plan_ladder(config)
    trunk = rungs[0]
    assert trunk.budget_tokens == 1638400 and trunk.branch_from_tokens is None
    assert sorted(r.branch_from_tokens for r in rungs[1:]) == [327680, 655360]
    assert set(trunk.config.train.checkpoint_at_tokens) >= {327680, 655360}


# --- bad config files and values (issue 10, items 3, 6, 9, 11) -------------------------------------


def test_duplicate_yaml_keys_are_refused_naming_the_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 1e-3\nmodel: {preset: nano}\ntrain:\n  max_tokens: 2e6\n")
    with pytest.raises(OvertrainError, match=r"line 4: key 'train' appears twice \(lines 1 and 4\)") as caught:
        load_pretrain_config(path)
    assert "once" in caught.value.fix
    nested = tmp_path / "nested_twice.yaml"
    nested.write_text("train:\n  lr: 1e-3\n  lr: 2e-3\n")
    with pytest.raises(OvertrainError, match="key 'lr' appears twice"):
        load_pretrain_config(nested)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"# only a comment\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
        (b"model:\n  d_model: 64\n\x00\x00", "not a text file"),
        (b"train: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests"),
        (b"a:\n" + b"".join(b"  " * depth + b"b:\n" for depth in range(1, 60)), "nests"),
    ],
    ids=["empty", "comment-only", "binary", "nul-bytes", "deep-brackets", "deep-indentation"],
)
def test_unusable_config_files_are_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(OvertrainError, match=message) as caught:
        load_pretrain_config(path)
    assert caught.value.fix


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("train: {lr: 1e-3}\n")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 000 does not stop root, who runs CI here
    with pytest.raises(OvertrainError, match="cannot be read \\(Permission denied\\)"):
        load_pretrain_config(path)
    monkeypatch.undo()
    with pytest.raises(OvertrainError, match="is a folder"):
        load_pretrain_config(tmp_path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.d_model=0", "model.d_model"),
        ("model.n_layers=0", "model.n_layers"),
        ("model.init_std=0", "model.init_std"),
        ("model.init_std_overrides={'*no_such.weight': 0.01}", "matches no tensor"),
        ("model.init_std_overrides={'*o_proj.weight': -1}", "init_std_overrides"),
        ("train.eval_tokens=0", "train.eval_tokens"),
        ("train.eval_tokens=-5", "train.eval_tokens"),
        ("train.eval_every_tokens=0", "train.eval_every_tokens"),
        ("train.checkpoint_at_tokens=[-4096]", "train.checkpoint_at_tokens"),
        ("train.checkpoint_every_tokens=-1", "train.checkpoint_every_tokens"),
        ("train.beta2=1.5", "train.beta2"),
        ("train.beta1=-0.1", "train.beta1"),
        ("train.eps=0", "train.eps"),
        ("train.lr=nan", "train.lr"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.seed=-1", "train.seed"),
        ("train.threads=-2", "train.threads"),
        ("device=tpu", "device"),
        ("data.heldout_fraction=0", "data.heldout_fraction"),
        ("data.max_documents=0", "data.max_documents"),
    ],
)
def test_accepted_bad_values_are_now_refused_before_any_compute(override: str, key: str) -> None:
    with pytest.raises(OvertrainError, match=key.replace("*", r"\*").replace(".", r"\.")) as caught:
        load_pretrain_config(None, ["train.threads=1", override])
    assert caught.value.fix


def test_every_problem_of_a_config_is_reported_at_once() -> None:
    with pytest.raises(OvertrainError, match="4 invalid settings") as caught:
        load_pretrain_config(None, ["model.d_model=0", "train.beta2=1.5", "train.seed=-1", "device=tpu"])
    for key in ("model.d_model", "train.beta2", "train.seed", "device"):
        assert key in caught.value.problem and key in caught.value.fix
    # tied presets have no lm_head tensor of their own: an override naming it names nothing
    with pytest.raises(OvertrainError, match="matches no tensor"):
        load_pretrain_config(None, ["model.preset=nano", "model.init_std_overrides={'lm_head.weight': 0.01}"])


def test_a_whole_number_is_taken_from_a_float_only_where_the_float_holds_it_exactly() -> None:
    """int(1e30) is 1000000000000000019884624838656: a budget written so was trained to that number, silently."""
    assert load_pretrain_config(None, ["train.max_tokens=9e15"]).train.max_tokens == 9 * 10**15
    assert load_pretrain_config(None, [f"train.max_tokens={10**30}"]).train.max_tokens == 10**30  # digits are exact
    with pytest.raises(OvertrainError, match="train.max_tokens = 1e\\+30 is too large to be read exactly from a float") as caught:
        load_pretrain_config(None, ["train.max_tokens=1e30"])
    assert caught.value.fix == "write train.max_tokens in digits (a float holds every whole number up to 2^53, about 9e15)"
    assert load_pretrain_config(None, ["train.max_tokens=1e16"]).train.max_tokens == 10**16  # beyond 2^53, but exact
