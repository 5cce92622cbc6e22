"""Find checkpoints: ours (a checkpoint, a run folder, a ladder folder) and foreign ones (a Hugging Face
model folder, a folder of such folders, ``hf:ORG/NAME@REVISION``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from overtrain.checkpoints.folder import is_overtrain_checkpoint, read_checkpoint_info
from overtrain.checkpoints.foreign import is_hf_model_folder
from overtrain.checkpoints.hub import is_hub_reference, parse_hub_reference
from overtrain.checkpoints.names import parse_checkpoint_name
from overtrain.errors import OvertrainError

KIND_OVERTRAIN, KIND_LOCAL, KIND_HUB = "overtrain", "local", "hub"


@dataclass(frozen=True)
class CheckpointRef:
    """One model to probe: what to pass to ``load_probe_target`` (``str(ref)``), and what is known of it."""

    reference: str
    """A folder path, or ``hf:ORG/NAME@REVISION``."""
    kind: str
    """``overtrain`` (our checkpoint), ``local`` (a Hugging Face folder) or ``hub``."""
    tokens_seen: int | None = None
    """Pre-training tokens when known (our checkpoints), else ``None``."""

    def __str__(self) -> str:
        return self.reference

    @property
    def path(self) -> Path | None:
        """The local folder (``None`` for a Hub reference, which is resolved when loaded)."""
        return None if self.kind == KIND_HUB else Path(self.reference)


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


def _natural_key(path: Path) -> list[object]:
    """``step-2`` before ``step-10``: digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _ours(folder: Path) -> CheckpointRef:
    return CheckpointRef(str(folder), KIND_OVERTRAIN, read_checkpoint_info(folder).tokens_seen)


def _expand_one(text: str) -> list[CheckpointRef]:
    if is_hub_reference(text):
        return [CheckpointRef(str(parse_hub_reference(text)), KIND_HUB)]
    path = Path(text).expanduser()
    if is_overtrain_checkpoint(path):
        return [_ours(path)]
    if is_hf_model_folder(path):
        return [CheckpointRef(str(path), KIND_LOCAL)]
    if list_checkpoints(path):
        return [_ours(list_checkpoints(path)[-1])]
    children = sorted((child for child in path.iterdir() if child.is_dir()), key=_natural_key) if path.is_dir() else []
    # a ladder's runs (each by its last checkpoint) and any checkpoint or model folders beside them: none left out
    found = [_ours(folder) if is_overtrain_checkpoint(folder) else CheckpointRef(str(folder), KIND_LOCAL)
             for child in children if (folder := model_folder_of(child)) is not None]
    if found:
        return found
    if (path / "checkpoints").is_dir():
        raise OvertrainError(f"{text} is a run folder with no checkpoint yet",
                             "let the run write one (train it, or run the same command again to resume it), or pass a run that has one")
    raise OvertrainError(
        f"{text} is not a checkpoint, a run or ladder folder, a Hugging Face model folder (or a folder of them), or hf:ORG/NAME@REVISION",
        "pass e.g. runs/nano_ladder, RUN/checkpoints/step-..., a folder written by save_pretrained, or hf:EleutherAI/pythia-160m@step1000",
    )


def model_folder_of(child: Path) -> Path | None:
    """The checkpoint folder a subfolder of a ladder or family folder stands for: a run's last checkpoint, the
    subfolder itself where it is a checkpoint of ours or a Hugging Face model folder; None for anything else
    (a report, a cache). The one rule for the probes' expansion and the family listing."""
    if list_checkpoints(child):
        return list_checkpoints(child)[-1]
    return child if is_overtrain_checkpoint(child) or is_hf_model_folder(child) else None


def expand_checkpoints(references: list[str]) -> list[CheckpointRef]:
    """The models named by ``references``: known token counts first, smallest first; then the others in order."""
    found = [ref for text in references for ref in _expand_one(str(text))]
    known = sorted((ref for ref in found if ref.tokens_seen is not None), key=lambda ref: ref.tokens_seen)
    return known + [ref for ref in found if ref.tokens_seen is None]
