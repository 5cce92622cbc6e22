"""configs/ is the catalogue: every YAML in it (and the demo recipe) loads, validates and dry-runs.

The first line of each config names the command that runs it (``# overtrain VERB PATH ...``). GPU-scale
configs (configs/paper/) are loaded, validated and planned without the dry-run's timing calibration,
which would build their model here."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_families import hub  # noqa: F401 - family configs list their revisions from the recorded Hub answers

from overtrain.cli import main as cli_main
from overtrain.sweep.config import load_sweep_config
from overtrain.sweep.plan import plan_jobs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
DEMO_RECIPE = REPO / "src" / "overtrain" / "recipes" / "demo.yaml"


def _verb(path: Path) -> str:
    words = path.read_text().splitlines()[0].split()
    assert words[0] == "#" and "overtrain" in words, f"{path} does not start with the command that runs it"
    return words[words.index("overtrain") + 1]  # also `# torchrun ... -m overtrain VERB CONFIG`


def test_the_catalogue_is_not_empty() -> None:
    assert len(CONFIGS) >= 5 and {_verb(path) for path in CONFIGS} >= {"pretrain", "pretrain-ladder", "sweep"}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(path.relative_to(REPO / "configs")) for path in CONFIGS])
def test_every_config_loads_and_dry_runs(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], hub) -> None:
    verb, out = _verb(path), f"out_dir={tmp_path / 'out'}"
    if verb == "sweep" and "paper" in path.parts:
        assert plan_jobs(load_sweep_config(path, [out]))
        return
    assert cli_main([verb, str(path), out, "--dry-run"]) == 0
    assert "plan" in capsys.readouterr().out or verb == "pretrain-ladder"
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_the_demo_recipe_plans_every_job_kind(tmp_path: Path) -> None:
    jobs = plan_jobs(load_sweep_config(DEMO_RECIPE, [f"out_dir={tmp_path}"]))
    assert {job.kind for job in jobs} == {"pretrain", "noise", "finetune"}
