"""Checkpoint families: Hub listing, revision -> tokens, the duplicate check, selections, local families.

Hub answers are replayed from tests/data/hub_recordings (the API's JSON) by patching the two ``HfApi``
methods the stage calls, so production's code path (``HfApi()`` built by the stage, huggingface_hub's own
``GitRefs``/``RepoFile`` objects) is what runs. Nothing is downloaded: the download functions raise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import math
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import GitRefInfo, GitRefs, RepoFile, RepoFolder
from safetensors.torch import save_file

from overtrain.cli.family import add_family_arguments, command_family, parse_settings
from overtrain.errors import OvertrainError
from overtrain.families.integrity import Flag, find_duplicates, is_weight_file
from overtrain.families.listing import list_family
from overtrain.families.local import list_local_family
from overtrain.families.plan import format_table, plan_family
from overtrain.families.registry import FAMILIES, Family, branch_tokens, find_family, parse_branch
from overtrain.families.selection import parse_selection, select
from overtrain.model.config import ModelConfig
from overtrain.provenance import file_sha256

RECORDINGS = Path(__file__).parent / "data" / "hub_recordings"


def _not_found(error: type, url: str) -> Exception:
    """The Hub's 404 error, with a stand-in for the HTTP response (only its headers are read)."""
    return error(f"404 for {url}", response=SimpleNamespace(status_code=404, headers={}, request=None, url=url))


class Replay:
    """Patched ``HfApi.list_repo_refs`` / ``list_repo_tree`` answering from the recordings, with a call log."""

    def __init__(self, extra: dict[str, dict] | None = None) -> None:
        self.extra = extra or {}
        self.tree_calls: list[tuple[str, str]] = []

    def load(self, repo: str) -> dict:
        if repo in self.extra:
            return self.extra[repo]
        path = RECORDINGS / (repo.replace("/", "--") + ".json")
        if not path.is_file():
            raise _not_found(RepositoryNotFoundError, f"https://huggingface.co/api/models/{repo}/refs")
        return json.loads(path.read_text())

    def list_repo_refs(self, api: HfApi, repo_id: str, **kwargs) -> GitRefs:
        data = self.load(repo_id)["refs"]
        refs = {key: [GitRefInfo(name=r["name"], ref=r["ref"], target_commit=r["targetCommit"]) for r in data[key]]
                for key in ("branches", "converts", "tags")}
        return GitRefs(**refs)

    def list_repo_tree(self, api: HfApi, repo_id: str, path_in_repo: str | None = None, *, revision: str | None = None, **kwargs):
        self.tree_calls.append((repo_id, revision))
        trees = self.load(repo_id)["trees"]
        if revision not in trees:
            raise _not_found(RevisionNotFoundError, f"https://huggingface.co/api/models/{repo_id}/tree/{revision}")
        return iter([RepoFile(**entry) if entry["type"] == "file" else RepoFolder(**entry) for entry in trees[revision]])


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Replay:
    replay = Replay()
    monkeypatch.setattr(HfApi, "list_repo_refs", lambda api, repo_id, **kw: replay.list_repo_refs(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "list_repo_tree", lambda api, repo_id, *a, **kw: replay.list_repo_tree(api, repo_id, *a, **kw))

    def no_download(*args, **kwargs):
        raise AssertionError("the family stage must not download files")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_download)
        monkeypatch.setattr(HfApi, name, no_download)
    return replay


def _flags(plan) -> dict[str, list[str]]:
    return {name: [str(flag) for flag in flags] for name, flags in plan.report.flags.items() if flags}


# --- the duplicate check on the recorded families -----------------------------------------------------------


def test_pythia_step0_equals_step1_is_flagged_and_skipped(hub: Replay) -> None:
    plan = plan_family("pythia-70m")
    assert _flags(plan) == {"step0": ["duplicate(step1)"], "step1": ["duplicate(step0)"]}
    assert plan.report.final_alias == "step143000"  # main aliases the last step: expected, not flagged
    assert [r.name for r in plan.chosen] == ["step2", "step4", "step512", "step1000", "step71000", "step142000", "step143000"]
    assert all(revision == commit for (_, revision), commit in zip(hub.tree_calls, [r.commit for r in plan.listing.revisions]))
    assert {revision for _, revision in hub.tree_calls} == {r.commit for r in (*plan.listing.revisions, plan.listing.final)}


def test_pythia_2_8b_branches_serving_final_weights(hub: Replay) -> None:
    """EleutherAI/pythia#205: main's blob on the early grid; a second blob on a group that includes step143000."""
    plan = plan_family("pythia-2.8b")
    equals_final = {"step0", "step1", "step512", "step1000", "step53000", "step55000"}
    expected = {name: ["equals-final(main)"] for name in equals_final}
    expected |= {"step54000": ["duplicate(step64000)"], "step64000": ["duplicate(step54000)"], "step143000": ["duplicate(step54000)"]}
    assert _flags(plan) == expected
    assert plan.report.final_alias is None  # step143000 is not main here, so nothing is the trusted final
    assert [r.name for r in plan.chosen] == ["step66000", "step100000", "step142000"]
    everything = plan_family("pythia-2.8b", include_duplicates=True)
    assert len(everything.chosen) == len(everything.listing.revisions) == 12


def test_pythia_12b_mixed_first_shard(hub: Replay) -> None:
    """EleutherAI/pythia#206: two branches carry the final checkpoint's first shard, not all of its files."""
    plan = plan_family("pythia-12b")
    assert _flags(plan) == {"step50000": ["shares-files(main)"], "step58000": ["shares-files(main)"]}
    assert plan.report.final_alias == "step143000"


def test_olmo2_identical_stage1_shards(hub: Replay) -> None:
    """allenai/OLMo#915: stage1 steps 101000, 175000 and 300000 serve the same six shards."""
    plan = plan_family("olmo2-7b")
    cluster = ["stage1-step101000-tokens424B", "stage1-step175000-tokens735B", "stage1-step300000-tokens1259B"]
    assert _flags(plan) == {
        cluster[0]: [f"duplicate({cluster[1]})"], cluster[1]: [f"duplicate({cluster[0]})"], cluster[2]: [f"duplicate({cluster[0]})"],
    }
    listing = plan.listing
    assert listing.revision(cluster[0]).commit == "75e0a15f2508b9e98f144362f279698488e79ccc"
    assert listing.other_branches == ("stage2-ingredient1-step11931-tokens100B",)
    assert listing.revision("step3000-tokens13B").step == 3000  # a stage-1 branch without the prefix
    for revision in listing.revisions:  # OLMo-2 names state ceil(step x 4,194,304 / 1e9)
        stated = int(revision.name.rsplit("tokens", 1)[1].rstrip("B"))
        assert revision.tokens == revision.step * 4_194_304 and math.ceil(revision.tokens / 1e9) == stated
    assert cluster[0] not in {r.name for r in plan.chosen} and len(plan.chosen) == 7


def test_duplicate_finder_alone() -> None:
    weights = {"a": {"m.safetensors": "sha256:1"}, "b": {"m.safetensors": "sha256:1"}, "c": {"m.safetensors": "sha256:2"},
               "d": {}, "main": {"m.safetensors": "sha256:2"}}
    flags, alias = find_duplicates(weights, ["a", "b", "c", "d"], {"a": 1, "b": 2, "c": 3, "d": 4}, "main")
    assert alias is None  # the last step (d) has no weights, so c is not the expected alias of main
    assert flags == {"a": [Flag("duplicate", "b")], "b": [Flag("duplicate", "a")], "c": [Flag("equals-final", "main")],
                     "d": [Flag("no-weights")]}
    same_step, _ = find_duplicates({"x": {"m.bin": "sha256:9"}, "y": {"m.bin": "sha256:9"}}, ["x", "y"], {"x": 5, "y": 5}, None)
    assert same_step == {"x": [], "y": [Flag("alias", "x")]}
    assert is_weight_file("model-00001-of-00006.safetensors") and is_weight_file("pytorch_model.bin")
    assert not is_weight_file("optimizer.safetensors") and not is_weight_file("training_args.bin")


# --- listing, names and tokens ------------------------------------------------------------------------------


def test_pythia_tokens_and_tokens_per_parameter(hub: Replay) -> None:
    listing = list_family("hf:EleutherAI/pythia-70m")
    step1000 = listing.revision("step1000")
    assert (step1000.step, step1000.tokens) == (1000, 1000 * 2_097_152)
    assert step1000.tokens_per_parameter == pytest.approx(1000 * 2_097_152 / 70_426_624)
    assert step1000.reference == f"hf:EleutherAI/pythia-70m@{step1000.commit}"
    assert listing.final.name == "main" and len(listing.final.commit) == 40


def test_olmo_1b_names_run_low_but_agree_with_step_times_batch(hub: Replay) -> None:
    listing = list_family("olmo-1b")
    last = listing.revision("step738020-tokens3094B")
    assert last.tokens == 738020 * 4_194_304 and last.tokens_consistent
    assert plan_family("olmo-1b").report.final_alias == "step738020-tokens3094B"


def test_amber_tokens_are_labelled_estimates(hub: Replay) -> None:
    plan = plan_family("amber")
    first = plan.listing.revision("ckpt_000")
    assert first.step is None and first.tokens_source == "estimate"
    assert first.tokens == round(1_259_130_000_000 / 360)
    assert "~" in format_table(plan) and _flags(plan) == {}


def test_branch_names_and_token_rules() -> None:
    assert parse_branch("pythia", "step143000").step == 143000
    assert parse_branch("pythia", "step1-tokens2B") is None
    assert parse_branch("olmo", "step20000-tokens84B").name_tokens == 84 * 10**9
    assert parse_branch("olmo2-stage1", "stage2-ingredient1-step11931-tokens100B") is None
    assert parse_branch("amber", "ckpt_042").index == 42
    family = Family("x", "org/x", "olmo", 10**9, tokens_per_step=4_194_304)
    wrong = branch_tokens(family, parse_branch("olmo", "step1000-tokens40B"))  # 4.2B by step x batch
    assert (wrong.tokens, wrong.source, wrong.consistent) == (40 * 10**9, "name", False)
    assert branch_tokens(Family("y", "org/y", "olmo", None), parse_branch("olmo", "step5-tokens3B")).source == "name"
    assert all(f.repo.split("/")[1].lower().startswith(("pythia", "olmo", "amber")) for f in FAMILIES.values())


def test_unknown_repository_gets_its_scheme_from_branch_names(hub: Replay) -> None:
    hub.extra["someone/tiny-run"] = {"refs": {"branches": [
        {"name": "main", "ref": "refs/heads/main", "targetCommit": "a" * 40},
        {"name": "step100-tokens1B", "ref": "refs/heads/step100-tokens1B", "targetCommit": "b" * 40}], "converts": [], "tags": []}}
    listing = list_family("hf:someone/tiny-run")
    assert listing.family.scheme == "olmo" and listing.revision("step100-tokens1B").tokens == 10**9


# --- errors a user can fix ----------------------------------------------------------------------------------


def test_bad_sources_are_explained(hub: Replay) -> None:
    with pytest.raises(OvertrainError, match="unknown checkpoint family 'pythia-160'") as error:
        find_family("pythia-160")
    assert "pythia-160m" in error.value.fix
    with pytest.raises(OvertrainError, match="does not exist or is gated"):
        list_family("hf:nobody/nothing")
    hub.extra["org/final-only"] = {"refs": {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": "c" * 40}],
                                            "converts": [], "tags": []}}
    with pytest.raises(OvertrainError, match="named like a checkpoint"):
        list_family("hf:org/final-only")
    with pytest.raises(OvertrainError, match="revision 'step3' is not a checkpoint") as error:
        plan_family("pythia-70m", "[step2,step3]")
    assert "step2" in error.value.fix
    with pytest.raises(OvertrainError, match="skipped by the integrity check: duplicate"):
        plan_family("pythia-70m", "step0")
    assert [r.name for r in plan_family("pythia-70m", "step0", include_duplicates=True).chosen] == ["step0"]


def test_offline_listing_goes_through_the_real_client_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OvertrainError, match="HF_HUB_OFFLINE is set"):
        list_family("pythia-70m")


# --- selections ---------------------------------------------------------------------------------------------


def test_selections(hub: Replay) -> None:
    revisions = list_family("pythia-70m").revisions  # 9 steps, 0 .. 143000
    names = lambda chosen: [r.name for r in chosen]
    assert names(select(revisions, parse_selection("every:4"))) == ["step0", "step512", "step143000"]
    assert names(select(revisions, parse_selection("every:3"))) == ["step0", "step4", "step71000", "step143000"]
    assert names(select(revisions, parse_selection("log:4"))) == ["step1", "step512", "step1000", "step143000"]  # steps ~1, 52, 2735, 143000
    assert names(select(revisions, parse_selection(["step143000", "step2"]))) == ["step2", "step143000"]
    assert parse_selection("all").kind == "all" and parse_selection("log:8").count == 8
    with pytest.raises(OvertrainError, match="whole number"):
        parse_selection("every:0")


# --- local families -----------------------------------------------------------------------------------------


def _hf_folder(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.full((3, 4), float(seed))}, str(folder / "model.safetensors"))


def test_local_folder_of_hf_checkpoints(tmp_path: Path) -> None:
    for name, seed in (("step100-tokens1B", 1), ("step200-tokens2B", 2), ("step300-tokens3B", 2)):
        _hf_folder(tmp_path / "family" / name, seed)
    plan = plan_family(str(tmp_path / "family"))
    assert [r.tokens for r in plan.listing.revisions] == [10**9, 2 * 10**9, 3 * 10**9]
    assert plan.listing.family.parameters == 12
    assert _flags(plan) == {"step200-tokens2B": ["duplicate(step300-tokens3B)"], "step300-tokens3B": ["duplicate(step200-tokens2B)"]}
    assert [r.name for r in plan.chosen] == ["step100-tokens1B"]


def _our_checkpoint(folder: Path, step: int, tokens: int, seed: int) -> None:
    folder.mkdir(parents=True)
    save_file({"w": torch.full((2, 5), float(seed))}, str(folder / "model.safetensors"))
    run_config = {"model": dataclasses.asdict(ModelConfig()), "data": {}, "train": {"seq_len": 8}}
    meta = {"step": step, "tokens_seen": tokens, "run_config": run_config, "init_std": {},
            "checksums": {"model.safetensors": file_sha256(folder / "model.safetensors")}}
    (folder / "overtrain.json").write_text(json.dumps(meta))


def test_local_run_and_ladder_of_ours(tmp_path: Path) -> None:
    ladder = tmp_path / "ladder"
    _our_checkpoint(ladder / "budget-2k" / "checkpoints" / "step-000002-tokens-2000", 2, 2000, 1)
    _our_checkpoint(ladder / "budget-1k" / "checkpoints" / "step-000001-tokens-1000", 1, 1000, 2)
    _our_checkpoint(ladder / "budget-1k" / "checkpoints" / "step-000000-tokens-500", 0, 500, 3)
    listing = list_local_family(ladder)
    assert [(r.name, r.tokens) for r in listing.revisions] == [("budget-1k/step-000001-tokens-1000", 1000), ("budget-2k/step-000002-tokens-2000", 2000)]
    run = list_local_family(ladder / "budget-1k")
    assert [r.name for r in run.revisions] == ["step-000000-tokens-500", "step-000001-tokens-1000"]
    assert run.revisions[0].tokens_per_parameter == 50.0 and run.revisions[0].reference.endswith("step-000000-tokens-500")
    with pytest.raises(OvertrainError, match="is one checkpoint, not a family of them") as error:
        list_local_family(tmp_path / "ladder" / "budget-1k" / "checkpoints" / "step-000000-tokens-500")
    assert str(tmp_path / "ladder" / "budget-1k" / "checkpoints") in error.value.fix
    with pytest.raises(OvertrainError, match="holds no checkpoints"):
        list_local_family(tmp_path)


def test_our_checkpoints_copied_out_of_their_runs_keep_their_recorded_tokens(tmp_path: Path) -> None:
    """Checkpoints copied into a plain folder under names of the user's choosing are still ours: listed by the
    tokens their metadata records, not as foreign folders of unknown tokens."""
    _our_checkpoint(tmp_path / "shared" / "late", 2, 2000, 2)
    _our_checkpoint(tmp_path / "shared" / "early", 1, 1000, 1)
    _hf_folder(tmp_path / "shared" / "step300-tokens3B", 3)
    listing = list_local_family(tmp_path / "shared")
    assert [(r.name, r.tokens, r.tokens_source) for r in listing.revisions] == [
        ("early", 1000, "overtrain.json"), ("late", 2000, "overtrain.json"), ("step300-tokens3B", 3 * 10**9, "folder name")]


def test_a_checkpoint_folder_beside_runs_is_listed_and_probed_not_dropped(tmp_path: Path) -> None:
    """A folder holding a run and a bare checkpoint (another run's, copied in): both are models of the family,
    for the family listing and for the probes' expansion alike; a run with no checkpoint yet is named as one."""
    from overtrain.checkpoints.discovery import expand_checkpoints

    _our_checkpoint(tmp_path / "mixed" / "a" / "checkpoints" / "step-000001-tokens-1000", 1, 1000, 1)
    _our_checkpoint(tmp_path / "mixed" / "b", 2, 2000, 2)
    (tmp_path / "mixed" / "report").mkdir()  # neither: left out
    listing = list_local_family(tmp_path / "mixed")
    assert [(r.name, r.tokens) for r in listing.revisions] == [("a/step-000001-tokens-1000", 1000), ("b", 2000)]
    assert [(Path(ref.reference).name, ref.tokens_seen) for ref in expand_checkpoints([str(tmp_path / "mixed")])] == [
        ("step-000001-tokens-1000", 1000), ("b", 2000)]
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(OvertrainError, match="is a run folder with no checkpoint yet"):
        expand_checkpoints([str(tmp_path / "fresh")])


def test_a_local_checkpoint_cut_short_is_flagged_damaged_and_never_computed_on(tmp_path: Path) -> None:
    """Its recorded checksum still names the intact weights, so only reading the file's header tells."""
    run = tmp_path / "run"
    for step, seed in ((1, 1), (2, 2)):
        _our_checkpoint(run / "checkpoints" / f"step-00000{step}-tokens-{step}000", step, step * 1000, seed)
    damaged = run / "checkpoints" / "step-000002-tokens-2000"
    os.truncate(damaged / "model.safetensors", 60)
    for include_duplicates in (False, True):
        plan = plan_family(str(run), "all", include_duplicates=include_duplicates)
        assert [r.name for r in plan.chosen] == ["step-000001-tokens-1000"]
        assert [str(flag) for flag in plan.report.flags["step-000002-tokens-2000"]] == ["damaged(model.safetensors)"]
    assert "damaged(model.safetensors)" in format_table(plan_family(str(run), "all"))


def test_a_runs_repeated_final_weights_keep_the_final_checkpoint(tmp_path: Path) -> None:
    """A schedule that decays to zero takes the last step at LR 0, so a checkpoint one step before the end
    holds the final weights. Both were flagged duplicates and skipped before: the run's final model was left
    out of every family sweep. Folders overtrain did not write keep the strict rule (all flagged)."""
    run = tmp_path / "run"
    for step, seed in ((1, 1), (2, 2), (3, 2)):
        _our_checkpoint(run / "checkpoints" / f"step-00000{step}-tokens-{step}000", step, step * 1000, seed)
    plan = plan_family(str(run), "all")
    assert _flags(plan) == {"step-000002-tokens-2000": ["duplicate(step-000003-tokens-3000)"]}
    assert [r.name for r in plan.chosen] == ["step-000001-tokens-1000", "step-000003-tokens-3000"]


def test_an_empty_family_source_is_refused_not_taken_for_the_working_directory() -> None:
    with pytest.raises(OvertrainError, match="the family source is empty"):
        plan_family("  ")


@pytest.mark.parametrize(("written", "message"), [([], "names no revision"), ("[]", "names no revision"), (["a", ""], "holds an empty name"),
                                                   (["step1", "step2", "step1"], "names step1 more than once"), ("[a,b,a]", "names a more than once")])
def test_a_selection_of_no_name_or_a_name_twice_is_refused(written: object, message: str) -> None:
    with pytest.raises(OvertrainError, match=message):
        parse_selection(written)


def test_a_sweeps_family_section_whose_every_revision_is_flagged_is_refused(tmp_path: Path) -> None:
    from overtrain.sweep.config import sweep_config_from_tree
    from overtrain.sweep.plan import plan_jobs

    run = tmp_path / "run"
    _our_checkpoint(run / "checkpoints" / "step-000001-tokens-1000", 1, 1000, 1)
    os.truncate(run / "checkpoints" / "step-000001-tokens-1000" / "model.safetensors", 60)
    config = sweep_config_from_tree({"out_dir": str(tmp_path / "sweep"), "family": {"source": str(run)}, "noise": {}})
    with pytest.raises(OvertrainError, match=r"family.source .* selects no revision to compute on: all 1 are flagged .*damaged"):
        plan_jobs(config)
    repeated = sweep_config_from_tree({"out_dir": str(tmp_path / "sweep"), "family": {"source": str(run), "select": ["a", "a"]}, "noise": {}})
    with pytest.raises(OvertrainError, match=r"^family\.select=\['a', 'a'\] names a more than once"):  # the sweep's key
        plan_jobs(repeated)


@pytest.mark.parametrize("path", ["/no/such/ladder", "./no_such_ladder", "~/no_such_ladder"])
def test_a_family_path_that_does_not_exist_is_said_so_not_taken_for_a_hub_name(path: str) -> None:
    with pytest.raises(OvertrainError, match=f"{path} does not exist"):
        find_family(path)


# --- the verb -----------------------------------------------------------------------------------------------


def test_family_verb_prints_the_table(hub: Replay, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_family_arguments(parser)
    assert command_family(parser.parse_args(["olmo2-7b", "select=every:2"])) == 0
    out = capsys.readouterr().out
    assert "olmo2-7b (allenai/OLMo-2-1124-7B): 10 checkpoints" in out
    assert "75e0a15f2508" in out and "duplicate(stage1-step175000-tokens735B)" in out
    assert "3 flagged and skipped" in out
    with pytest.raises(OvertrainError, match="unknown setting"):
        parse_settings(["selct=all"])
