"""A run folder is bound to the settings that define its result (issue 10, item 1).

One tiny run is trained once per module; every re-run below is either refused before any compute or
resumes at the end without training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import tiny_pretrain_config, write_stdlib_text_corpus

from overtrain.checkpoints.discovery import list_checkpoints
from overtrain.errors import OvertrainError
from overtrain.pretrain.binding import settings_hash
from overtrain.pretrain.loop import RunResult, train_run


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    """A run of 4096 tokens (a cosine schedule annealed to zero), its folder kept as the pristine copy."""
    root = tmp_path_factory.mktemp("reruns")
    corpus = write_stdlib_text_corpus(root / "corpus", documents=30)
    config = tiny_pretrain_config(root, corpus, "train.max_tokens=4096", "train.eval_every_tokens=2048")
    return root, train_run(config, log=lambda *_: None)


def copy_of_run(finished: tuple[Path, RunResult], tmp_path: Path, *overrides: str):
    """A fresh copy of the finished run folder and the config that points at it with ``overrides``."""
    root, _ = finished
    shutil.copytree(root / "run", tmp_path / "run")
    return tiny_pretrain_config(tmp_path, root / "corpus", "train.max_tokens=4096", "train.eval_every_tokens=2048",
                                f"data.cache_dir={root / 'cache'}", *overrides)


@pytest.mark.parametrize(
    ("overrides", "differences"),
    [
        (["train.max_tokens=8192"], ["train.max_tokens: 4096 -> 8192"]),
        (["train.max_tokens=2048"], ["train.max_tokens: 4096 -> 2048"]),
        (["train.lr=1e-3", "train.schedule=wsd"], ["train.lr: 0.003 -> 0.001", "train.schedule: 'cosine' -> 'wsd'"]),
    ],
)
def test_a_rerun_with_other_result_settings_is_refused(finished, tmp_path: Path, overrides: list[str], differences: list[str]) -> None:
    config = copy_of_run(finished, tmp_path, *overrides)
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(OvertrainError) as caught:
        train_run(config, log=lambda *_: None)
    for difference in differences:
        assert difference in caught.value.problem
    assert "new out_dir" in caught.value.fix and "train.extend=true" in caught.value.fix
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml, "config.yaml keeps the settings that were used"
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000016-tokens-4096"]


def test_result_neutral_settings_may_change(finished, tmp_path: Path) -> None:
    config = copy_of_run(finished, tmp_path, "train.threads=2", "train.eval_every_tokens=1024", "train.checkpoint_at_tokens=[4096]")
    lines: list[str] = []
    result = train_run(config, log=lines.append)
    assert result.steps_trained == 0 and result.tokens_seen == 4096
    assert result.final_heldout_loss == pytest.approx(finished[1].final_heldout_loss, rel=1e-6)
    assert any("train.eval_every_tokens is now 1,024" in line and "keep the old spacing" in line for line in lines)


@pytest.mark.parametrize("change", ["train.checkpoint_every_tokens=2048", "train.checkpoint_at_tokens=[1024]"])
def test_a_checkpoint_the_run_trained_past_is_refused_not_claimed(change: str, finished, tmp_path: Path) -> None:
    config = copy_of_run(finished, tmp_path, change)
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(OvertrainError, match=r"trained to 4,096 tokens and kept none there") as error:
        train_run(config, log=lambda *_: None)
    assert "new out_dir" in error.value.fix
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml  # the run's config never claims them


def test_a_run_from_before_run_json_is_bound_to_its_checkpoint_settings(finished, tmp_path: Path) -> None:
    config = copy_of_run(finished, tmp_path, "train.max_tokens=8192")
    (tmp_path / "run" / "run.json").unlink()
    with pytest.raises(OvertrainError, match="train.max_tokens: 4096 -> 8192"):
        train_run(config, log=lambda *_: None)


def test_extend_continues_from_the_newest_checkpoint_and_says_what_it_did(finished, tmp_path: Path) -> None:
    config = copy_of_run(finished, tmp_path, "train.max_tokens=6144", "train.extend=true")
    settings_before = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    lines: list[str] = []
    result = train_run(config, log=lines.append)
    assert result.started_at_tokens == 4096 and result.tokens_seen == 6144 and result.steps_trained == 8
    note = next(line for line in lines if line.startswith("extending"))
    assert "train.max_tokens: 4096 -> 6144" in note and "step 16" in note
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["settings"]["train.max_tokens"] == 6144
    assert run["extensions"] == [{"at_tokens": 4096, "at_step": 16, "changes": ["train.max_tokens: 4096 -> 6144"],
                                  "previous_settings_sha256": settings_hash(settings_before)}]
    assert "max_tokens: 6144" in (tmp_path / "run" / "config.yaml").read_text()
    assert "extend:" not in (tmp_path / "run" / "config.yaml").read_text(), "an instruction, not a setting"
    # the extended run is now bound to its new settings: the same command resumes, the old one is refused
    assert train_run(copy_settings(config, extend=False), log=lambda *_: None).steps_trained == 0
    with pytest.raises(OvertrainError, match="train.max_tokens: 6144 -> 4096"):
        train_run(copy_settings(config, extend=False, max_tokens=4096), log=lambda *_: None)


def copy_settings(config, **train_changes):
    import copy

    changed = copy.deepcopy(config)
    for key, value in train_changes.items():
        setattr(changed.train, key, value)
    return changed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.max_tokens=2048", "train.extend=true"], "already trained to 4,096 tokens"),
        (["model.d_model=64", "train.extend=true"], "cannot continue"),
        (["train.seed=3", "train.extend=true"], "train.seed: 0 -> 3"),
    ],
)
def test_extend_refuses_what_cannot_continue_a_run(finished, tmp_path: Path, overrides: list[str], message: str) -> None:
    config = copy_of_run(finished, tmp_path, *overrides)
    with pytest.raises(OvertrainError, match=message):
        train_run(config, log=lambda *_: None)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000016-tokens-4096"]


def test_dry_run_refuses_what_the_run_refuses(finished, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overtrain.cli import main as cli_main
    from overtrain.config import dump_yaml

    config = copy_of_run(finished, tmp_path)
    spec = tmp_path / "run.yaml"
    spec.write_text(dump_yaml(config))
    before = sorted(path.name for path in (tmp_path / "run").rglob("*"))
    assert cli_main(["pretrain", str(spec), "--dry-run"]) == 0  # the same settings: a resume
    capsys.readouterr()
    assert cli_main(["pretrain", str(spec), "train.lr=1e-3", "--dry-run"]) == 2
    assert "holds a run trained to 4.1k tokens with other settings than this config: train.lr" in capsys.readouterr().err
    assert cli_main(["pretrain", str(spec), "train.max_tokens=6144", "train.extend=true", "--dry-run"]) == 0
    assert "the run would say: extending" in capsys.readouterr().out
    assert cli_main(["pretrain", str(spec), f"data.corpus={tmp_path / 'no-such-corpus'}", "--dry-run"]) == 2
    assert "no-such-corpus' does not exist" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "run").rglob("*")) == before  # a dry run writes nothing


def test_a_run_killed_before_its_first_checkpoint_is_not_told_to_continue_from_one(tmp_path: Path) -> None:
    """Its run.json binds the settings, but there is no checkpoint: the fix says train.extend=true starts it over."""
    from overtrain.config import config_to_dict
    from overtrain.pretrain.binding import check_run_binding, write_binding
    from overtrain.pretrain.config import load_pretrain_config

    first = load_pretrain_config(None, [f"out_dir={tmp_path / 'run'}", "train.max_tokens=20000", "train.warmup_tokens=1000"])
    (tmp_path / "run").mkdir()
    binding, _ = check_run_binding(tmp_path / "run", config_to_dict(first), False, None)
    write_binding(tmp_path / "run", binding)
    changed = load_pretrain_config(None, [f"out_dir={tmp_path / 'run'}", "train.max_tokens=30000", "train.warmup_tokens=1000"])
    with pytest.raises(OvertrainError, match="holds a run started \\(no checkpoint yet\\) with other settings") as caught:
        check_run_binding(tmp_path / "run", config_to_dict(changed), False, None)
    assert "to start it over under them in this folder (it kept no checkpoint), add train.extend=true" in caught.value.fix
    assert "from its newest checkpoint" not in caught.value.fix
