"""The name of a checkpoint folder, ``step-000120-tokens-1966080``: written and parsed here only."""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_NAME = re.compile(r"^step-(\d+)-tokens-(\d+)$")


def checkpoint_folder_name(step: int, tokens_seen: int) -> str:
    return f"step-{step:06d}-tokens-{tokens_seen}"


def parse_checkpoint_name(name: str | Path) -> tuple[int, int] | None:
    """(step, tokens_seen) of a checkpoint folder name (or path), or None if it is not one."""
    match = CHECKPOINT_NAME.match(Path(name).name)
    return (int(match.group(1)), int(match.group(2))) if match else None
