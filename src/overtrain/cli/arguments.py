"""Argument shapes shared by the verbs: ``VERB [CONFIG] [key=value ...] [--dry-run]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan; train nothing")


def path_argument(text: str) -> str:
    """An ``--out`` value: not empty (an unset shell variable), which would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a folder or file (an empty value would mean the current folder)")
    return text


def split_config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse cannot tell ``CONFIG`` from a first ``key=value``; an argument with '=' is an override."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return config, overrides


def refuse_a_config_file(verb: str, overrides: list[str], instead: str) -> None:
    """``overtrain demo`` and ``overtrain theory`` take settings only: a config file given to them is named as
    such, rather than read as an override without '=' (whose fix would say to put the config first)."""
    from overtrain.errors import OvertrainError

    for text in overrides:
        if "=" not in text and (text.endswith((".yaml", ".yml")) or Path(text).is_file()):
            raise OvertrainError(f"overtrain {verb} takes no config file, only key=value settings; got {text!r}", instead)
