"""Local families: a run or ladder of ours, or a folder of Hugging Face checkpoint folders.

- a run folder (``RUN/checkpoints/step-...``): every checkpoint of the run;
- a ladder folder (one run per budget): the final checkpoint of each run, as ``overtrain noise`` takes it;
- any other folder: its subfolders that hold a ``config.json`` (``save_pretrained`` output, Hub snapshots).

Nothing is written. Steps and tokens of our checkpoints come from ``overtrain.json``; a foreign folder's
name is read with the Hub schemes (``step1000``, ``step1000-tokens4B``, ``ckpt_042``) or ours, else its
tokens are unknown. Weight hashes: the sha256 ``overtrain.json`` recorded; a Hub cache's blob name when
the file links into ``blobs/`` (it is the LFS sha256); otherwise the file is hashed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from overtrain.checkpoints.discovery import list_checkpoints, model_folder_of
from overtrain.checkpoints.folder import METADATA_FILE, is_overtrain_checkpoint, read_checkpoint_info, safetensors_header_problem
from overtrain.checkpoints.names import parse_checkpoint_name
from overtrain.errors import OvertrainError
from overtrain.families.integrity import is_weight_file
from overtrain.families.listing import FamilyListing, Revision
from overtrain.families.registry import SCHEMES, Family, parse_branch
from overtrain.provenance import file_sha256

SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def is_local_source(source: str) -> bool:
    """A path that exists is a local family (a Hub name never does)."""
    return Path(source).is_dir()


def list_local_family(folder: Path) -> FamilyListing:
    """The checkpoints of a run, a ladder, or a folder of Hugging Face folders, in order of tokens."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OvertrainError(f"{folder} is not a folder", "pass a run, a ladder, or a folder of Hugging Face checkpoint folders")
    if list_checkpoints(folder):
        revisions = [_ours(path, folder) for path in list_checkpoints(folder)]
    else:  # a ladder's runs, and checkpoint folders beside or instead of them: none left out
        revisions = [_ours(model, folder) if is_overtrain_checkpoint(model) else _foreign(model, folder)
                     for path in _subfolders(folder) if (model := model_folder_of(path)) is not None]
    if not revisions and any((folder / name).is_file() for name in ("config.json", METADATA_FILE)):
        raise OvertrainError(
            f"{folder} is one checkpoint, not a family of them",
            f"pass the folder that holds it and its siblings ({folder.parent}), or probe this one checkpoint directly "
            "(overtrain noise/finetune/sharpness take it as it is)",
        )
    if not revisions:
        raise OvertrainError(
            f"{folder} holds no checkpoints (no RUN/checkpoints/step-*, no run folders, no folders with config.json)",
            "pass e.g. runs/nano_ladder, runs/nano_ladder/budget-1M, or a folder of save_pretrained folders",
        )
    revisions.sort(key=lambda r: (r.tokens if r.tokens is not None else math.inf, r.order, r.name))
    parameters = next((r.parameters for r in reversed(revisions) if r.parameters), None)
    family = Family(folder.name, str(folder), "local", parameters)
    return FamilyListing(family, tuple(revisions), final=None)


def local_weight_files(revision: Revision) -> dict[str, str]:
    """``{file: sha256:HEX}`` of a local revision's weights: recorded, read from a cache link, or hashed."""
    folder = Path(revision.path or revision.source)
    recorded: dict[str, str] = {}
    if is_overtrain_checkpoint(folder):
        recorded = read_checkpoint_info(folder).checksums
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not is_weight_file(path.name):
            continue
        linked = path.resolve().name if path.is_symlink() else ""
        digest = recorded.get(path.name) or (linked if SHA256_NAME.match(linked) else None) or file_sha256(path)
        files[path.name] = f"sha256:{digest}"
    return files


def damaged_weight_file(revision: Revision) -> str | None:
    """The name of a local revision's first safetensors weight file that is cut short or not safetensors
    (its header read, no tensor), or None. Recorded checksums identify the weights without reading them, so
    without this a truncated checkpoint was listed as usable."""
    folder = Path(revision.path or revision.source)
    for path in sorted(folder.glob("*.safetensors")):
        if is_weight_file(path.name) and safetensors_header_problem(path):
            return path.name
    return None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir())


def _ours(path: Path, root: Path) -> Revision:
    info = read_checkpoint_info(path)
    return Revision(
        _relative_name(path, root), info.step, info.tokens_seen, METADATA_FILE, _parameter_count(path), str(root),
        order=info.step, path=path,
    )


def _foreign(path: Path, root: Path) -> Revision:
    ours = parse_checkpoint_name(path)
    if ours is not None:
        step, tokens, source = ours[0], ours[1], "folder name"
    else:
        parsed = next((p for p in (parse_branch(scheme, path.name) for scheme in SCHEMES) if p is not None), None)
        step = parsed.step if parsed else None
        tokens = parsed.name_tokens if parsed else None
        source = "folder name" if tokens is not None else "unknown"
    return Revision(path.name, step, tokens, source, _parameter_count(path), str(root), order=step or 0, path=path)


def _relative_name(path: Path, root: Path) -> str:
    """``step-000120-tokens-1966080`` for a run; ``budget-1M/step-...`` for a ladder."""
    relative = path.relative_to(root)
    return str(relative.parent.parent / relative.name) if relative.parent.name == "checkpoints" else str(relative)


def _parameter_count(folder: Path) -> int | None:
    """Parameters in the folder's safetensors weight files, from their headers (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    total = 0
    files = [path for path in sorted(folder.glob("*.safetensors")) if is_weight_file(path.name)]
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
        except (SafetensorError, OSError):
            return None
    return total or None
