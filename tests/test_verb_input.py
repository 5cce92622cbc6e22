"""Bad command-line input to alpaca-export, theory and family is refused with one OvertrainError naming the fix,
before any model is loaded or any simulation runs, and nothing is written; report and tasks teach in --help."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import write_untrained_checkpoint
from test_instruct import write_alpaca_sdist

from overtrain.cli import main
from overtrain.errors import OvertrainError
from overtrain.tasks import instruct


def _refused(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, assert it refused with status 2 and no traceback; return what it printed on stderr."""
    assert main(arguments) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("error: ") and "Traceback" not in printed
    return printed


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of two untrained checkpoints (256 and 512 tokens, different seeds): the newest is the second."""
    run = tmp_path_factory.mktemp("verb_input") / "run"
    write_untrained_checkpoint(run, seed=0, step=1, tokens_seen=256)
    write_untrained_checkpoint(run, seed=1, step=2, tokens_seen=512)
    return run


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if alpaca-export gets as far as loading the model."""
    def refuse(reference: str):
        raise AssertionError(f"the model {reference} was loaded before the input was checked")

    monkeypatch.setattr("overtrain.cli.instruct.load_chat_model", refuse)


# ---- alpaca-export ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_model_loading")
def test_alpaca_export_refuses_every_bad_number_at_once_before_loading(run_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "answers.json"
    checkpoint = str(run_folder)
    printed = _refused(["alpaca-export", checkpoint, "--out", str(out), "--limit", "1", "--batch-size", "-2"], capsys)
    assert "--batch-size=-2 is invalid" in printed and "whole number of instructions >= 1" in printed
    printed = _refused(["alpaca-export", checkpoint, "--out", str(out), "--limit", "0", "--batch-size", "0", "--max-new-tokens", "0"], capsys)
    assert "3 invalid settings" in printed
    assert all(f"{flag}=0 is invalid" in printed for flag in ("--limit", "--batch-size", "--max-new-tokens"))
    printed = _refused(["alpaca-export", checkpoint, "--out", str(out), "--max-new-tokens", "64", "--max-len", "64"], capsys)
    assert "--max-len=64 is invalid" in printed and "more tokens than --max-new-tokens (64)" in printed
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_model_loading")
def test_alpaca_export_refuses_an_unwritable_out_before_loading(run_folder: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    printed = _refused(["alpaca-export", str(run_folder), "--out", str(a_file / "answers.json"), "--limit", "2"], capsys)
    assert f"cannot write to the folder of the answers file {a_file}" in printed and "is a file, not a folder" in printed
    printed = _refused(["alpaca-export", str(run_folder), "--out", str(tmp_path), "--limit", "2"], capsys)
    assert f"the answers file {tmp_path} is a folder, not a file" in printed
    assert a_file.read_text() == "keep me" and sorted(path.name for path in tmp_path.iterdir()) == ["afile"]


def test_alpaca_export_library_checks_before_generating(run_folder: Path, tmp_path: Path) -> None:
    from overtrain.probes.instruct_readouts import alpaca_eval_export

    class NeverCalled:  # the model and tokenizer must not be touched: the checks come first
        def __getattr__(self, name: str):
            raise AssertionError(f"used .{name} before the settings were checked")

    with pytest.raises(OvertrainError, match=re.escape("batch_size=0 is invalid")):
        alpaca_eval_export(NeverCalled(), NeverCalled(), tmp_path / "a.json", "g", limit=1, batch_size=0)
    with pytest.raises(OvertrainError, match=re.escape(f"the AlpacaEval answers file {tmp_path} is a folder, not a file")):
        alpaca_eval_export(NeverCalled(), NeverCalled(), tmp_path, "g", limit=1)
    assert list(tmp_path.iterdir()) == []


def test_alpaca_export_names_a_missing_path_and_refuses_a_ladder(run_folder: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no" / "such" / "checkpoint"
    printed = _refused(["alpaca-export", str(missing), "--out", str(tmp_path / "a.json")], capsys)
    assert f"checkpoint {missing} does not exist" in printed
    printed = _refused(["alpaca-export", str(run_folder / "checkpoints"), "--out", str(tmp_path / "a.json")], capsys)
    assert "holds 2 models" in printed and "alpaca-export answers with one" in printed
    assert not (tmp_path / "a.json").exists()


def test_alpaca_export_answers_with_a_run_folders_newest_checkpoint(run_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from overtrain.checkpoints.discovery import list_checkpoints
    from overtrain.checkpoints.folder import load_model
    from overtrain.data.tokenizer import load_tokenizer
    from overtrain.probes.instruct_readouts import greedy_answers

    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(instruct.INDEX_ENVIRONMENT, "http://127.0.0.1:9/simple")  # closed port: no download
    (tmp_path / "cache" / "packages").mkdir(parents=True)
    write_alpaca_sdist(tmp_path / "cache" / "packages" / instruct.ALPACA_EVAL.filename)
    out = tmp_path / "answers.json"
    assert main(["alpaca-export", str(run_folder), "--out", str(out), "--limit", "2", "--max-new-tokens", "3"]) == 0
    rows = json.loads(out.read_text())
    newest = list_checkpoints(run_folder)[-1]
    assert newest.name.endswith("tokens-512")
    model, _ = load_model(newest)
    expected = greedy_answers(model.eval(), load_tokenizer(newest), [row["instruction"] for row in rows], max_new_tokens=3)
    assert [row["output"] for row in rows] == expected and {row["generator"] for row in rows} == {"run"}


# ---- theory -------------------------------------------------------------------------------------------------


def test_theory_checks_out_before_simulating_and_in_dry_run(tmp_path: Path, monkeypatch, capsys) -> None:
    def refuse(config):
        raise AssertionError("the simulation ran before --out was checked")

    monkeypatch.setattr("overtrain.cli.theory.run_all", refuse)
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "sub"):
        for extra in ([], ["--dry-run"]):
            printed = _refused(["theory", "--out", str(out), *extra], capsys)
            assert f"cannot write to the theory output folder {out}" in printed and f"{a_file} is a file" in printed
    assert a_file.read_text() == "keep me" and [path.name for path in tmp_path.iterdir()] == ["afile"]


@pytest.mark.parametrize("override, named", [
    ("network.hidden_dim=0", "network.hidden_dim=0"),
    ("network.input_dim=-3", "network.input_dim=-3"),
    ("finetune.steps=0", "finetune.steps=0"),
    ("finetune.lrs=[]", "finetune.lrs=[]"),
    ("finetune.lrs=[0.01,-1]", "finetune.lrs=[0.01, -1.0]"),
    ("pretrain.time_max=0.5", "pretrain.time_max=0.5"),
    ("target.data_seeds=0", "target.data_seeds=0"),
])
def test_theory_value_errors_name_the_key_and_its_value(override: str, named: str) -> None:
    from overtrain.cli.theory import load_theory_config

    key = named.split("=")[0]
    with pytest.raises(OvertrainError, match=re.escape(f"theory setting {key} has a value the simulator cannot use: {named}")) as error:
        load_theory_config([override])
    assert error.value.fix.startswith(f"set {key} to ")


# ---- family -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["hf:EleutherAI/pythia-14m@nonexistent-rev", "hf:EleutherAI/pythia-14m@main", "pythia-160m@step1000"])
def test_family_refuses_a_revision_suffix_and_says_why(source: str, capsys) -> None:
    printed = _refused(["family", source, "select=[zzz]"], capsys)
    repo, revision = source.removeprefix("hf:").split("@")
    assert f"names one revision (@{revision}), but a family lists all of a repository's revisions" in printed
    assert f"drop @{revision}: `overtrain family {source.split('@')[0]}` lists every revision" in printed
    hub_repo = "EleutherAI/pythia-160m" if repo == "pythia-160m" else repo
    assert f"hf:{hub_repo}@{revision}" in printed.split("fix:")[1]  # the probe reference names the repository


def test_family_refuses_invalid_repository_ids_offline(capsys) -> None:
    printed = _refused(["family", "hf:bad name/x"], capsys)
    assert "'hf:bad name/x' is not a Hub repository name" in printed
    # passes ORG/NAME's pattern but not the Hub's own rules: the real client's validation, turned into our error
    printed = _refused(["family", "hf:a--b/c"], capsys)
    assert "'a--b/c' is not a valid Hub repository id" in printed


# ---- help ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb, teaches", [
    ("report", ["overtrain report runs/demo", "report.html", "summary.md", "results.sqlite"]),
    ("tasks", ["overtrain tasks", "task=file:", "(Hub or data_path)", "(offline)"]),
])
def test_report_and_tasks_help_teach_with_examples(verb: str, teaches: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main([verb, "--help"])
    assert exit_code.value.code == 0
    printed = capsys.readouterr().out
    assert "Examples:" in printed and all(text in printed for text in teaches), printed


@pytest.mark.parametrize("verb", ["demo", "theory"])
def test_a_config_file_given_to_a_verb_without_one_is_named_as_such(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("noise: {gammas: [1.0]}\n")
    assert main([verb, str(spec), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert f"overtrain {verb} takes no config file" in error and "the config file goes first" not in error
