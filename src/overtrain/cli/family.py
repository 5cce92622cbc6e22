"""``overtrain family SOURCE [select=...] [--include-duplicates]``: list, check and select a checkpoint family.

SOURCE is a known family (``pythia-160m``, ``olmo-1b``, ``olmo2-7b``, ``amber``...), a Hub repository
(``hf:ORG/NAME``), or a local folder (a run, a ladder, or a folder of Hugging Face checkpoint folders).
Only ``argparse`` is imported at module level, so the parser can be built without loading the stage.
"""

from __future__ import annotations

import argparse

FAMILY_SUMMARY = "list a checkpoint family's revisions with step, tokens and commit, and flag duplicate weights"

FAMILY_HELP = """\
Lists the checkpoint branches of a public family (never made up from a formula) or the checkpoints of a
local folder, with step, tokens, tokens per parameter and commit sha. The weight files' LFS sha256 values
are compared across revisions without downloading anything: revisions that serve another revision's
weights, or the final weights, are flagged and skipped unless --include-duplicates is given.
Settings: select=all | every:K | log:N | [REV,REV,...]  workers=8 (parallel Hub requests). Examples:
  overtrain family pythia-160m select=log:8
  overtrain family hf:allenai/OLMo-2-1124-7B select=every:50
  overtrain family runs/nano_ladder
Known families: pythia-{70m,160m,410m,1b,1.4b,2.8b,6.9b,12b}[-deduped], olmo-1b, olmo-7b, olmo2-1b,
olmo2-7b, amber (docs/families.md)."""

SETTINGS = ("select", "workers")


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``overtrain family`` (the parser in ``overtrain.cli`` adds them)."""
    parser.add_argument("source", help="a known family (pythia-160m, olmo2-7b, amber...), hf:ORG/NAME, or a local folder")
    parser.add_argument("settings", nargs="*", metavar="key=value", help="select=all|every:K|log:N|[REV,...]  workers=N")
    parser.add_argument("--include-duplicates", action="store_true", help="keep the revisions the integrity check flags")


def parse_settings(settings: list[str]) -> dict[str, str]:
    """``['select=log:8']`` -> {'select': 'log:8'}; unknown keys and missing '=' are errors."""
    from overtrain.errors import OvertrainError

    parsed = {}
    for text in settings:
        key, sep, value = text.partition("=")
        if not sep or key not in SETTINGS:
            raise OvertrainError(f"unknown setting {text!r}", "use select=all|every:K|log:N|[REV,...] and workers=N")
        parsed[key] = value
    if "workers" in parsed and not (parsed["workers"].isdigit() and int(parsed["workers"]) >= 1):
        raise OvertrainError(f"workers={parsed['workers']} is not a whole number >= 1", "write e.g. workers=8")
    return parsed


def command_family(args: argparse.Namespace) -> int:
    """Print the family table; returns 0 (errors a user can fix are raised as OvertrainError)."""
    from overtrain.families.plan import format_table, plan_family

    settings = parse_settings(list(args.settings))
    plan = plan_family(
        args.source, settings.get("select", "all"), include_duplicates=args.include_duplicates,
        workers=int(settings.get("workers", 8)),
    )
    print(format_table(plan))
    return 0
