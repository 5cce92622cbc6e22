"""Find checkpoints: a checkpoint folder, a run folder (its checkpoints), or a ladder folder (its runs)."""

from __future__ import annotations

from pathlib import Path

from overtrain.checkpoints.folder import METADATA_FILE, read_checkpoint_info
from overtrain.checkpoints.names import parse_checkpoint_name
from overtrain.errors import OvertrainError


def list_checkpoints(run_folder: Path) -> list[Path]:
    """Checkpoint folders of a run, in order of tokens seen."""
    folder = Path(run_folder) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and parse_checkpoint_name(path) is not None]
    return sorted(found, key=lambda path: parse_checkpoint_name(path)[1])


def checkpoint_at_tokens(run_folder: Path, tokens: int) -> Path | None:
    """The run's checkpoint written at exactly ``tokens`` tokens, if there is one."""
    return next((path for path in list_checkpoints(run_folder) if parse_checkpoint_name(path)[1] == tokens), None)


def expand_checkpoints(paths: list[str]) -> list[Path]:
    """Checkpoint folders named by ``paths``, smallest token count first."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if (path / METADATA_FILE).is_file():
            found.append(path)
        elif list_checkpoints(path):
            found.append(list_checkpoints(path)[-1])
        elif path.is_dir() and any(list_checkpoints(run) for run in sorted(path.iterdir()) if run.is_dir()):
            found += [list_checkpoints(run)[-1] for run in sorted(path.iterdir()) if run.is_dir() and list_checkpoints(run)]
        else:
            raise OvertrainError(f"{path} is not a checkpoint, a run folder or a ladder folder", "pass e.g. runs/nano_ladder or RUN/checkpoints/step-...")
    return sorted(found, key=lambda folder: read_checkpoint_info(folder).tokens_seen)
