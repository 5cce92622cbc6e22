"""Rows of one checkpoint measured under different settings, found before a report pools them.

A store grows by every sweep run into its folder. Rerun the same sweep with, say, ``noise.eval_tokens``
changed, and the new jobs have new keys: their rows join the old ones, and the report's tables and curves
would average two measurements of the same checkpoint, gamma and seed without a word. The report's own
axes (gamma, seed, task, lr, ...) are columns of its frames and are drawn apart; any *other* setting that
differs between rows of one checkpoint is what this module names, so the report can say so first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any

from overtrain.results.store import ResultStore
from overtrain.units import format_tokens

PROBE_KINDS = ("noise", "finetune", "sharpness", "benchmarks", "multimodal")
IDENTITY_KEYS = frozenset({"checkpoint", "factors"})
"""Spec keys that say which model was measured, not how."""


def pooled_settings(store: ResultStore, drawn_apart: Mapping[str, Collection[str]]) -> list[str]:
    """One warning per probe kind whose rows of one checkpoint differ in a setting the report does not draw
    apart (``drawn_apart[kind]``: the columns of that kind's frame), e.g. ``noise rows of one checkpoint
    differ in eval_tokens (1024, 4096): ...``. List-valued settings (the sweep's axes) are left out."""
    warnings = []
    for kind in PROBE_KINDS:
        varying = _varying_settings(store.rows(kind=kind), set(drawn_apart.get(kind, ())))
        if varying:
            described = "; ".join(f"{key} ({', '.join(sorted(values))})" for key, values in sorted(varying.items()))
            warnings.append(f"{kind} rows of one checkpoint were measured with different settings, and the tables and curves "
                            f"below pool them: {described}. Rerun the changed sweep into its own out_dir to keep them apart")
    return warnings


def _varying_settings(rows: list[Any], drawn_apart: set[str]) -> dict[str, set[str]]:
    values_by_checkpoint: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        for key, value in _scalar_settings(row.spec).items():
            values_by_checkpoint[str(row.spec.get("checkpoint"))][key].add(_shown(key, value))
    varying: dict[str, set[str]] = defaultdict(set)
    for settings in values_by_checkpoint.values():
        for key, values in settings.items():
            if len(values) > 1 and key.rsplit(".", 1)[-1] not in drawn_apart:
                varying[key] |= values
    return dict(varying)


def _scalar_settings(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The spec's settings as dotted keys, nested sections flattened, lists (axes) and identity keys left out."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if not prefix and key in IDENTITY_KEYS:
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _scalar_settings(value, f"{dotted}.")
        elif not isinstance(value, (list, tuple)):
            flat[dotted] = value
    return flat


def _shown(key: str, value: Any) -> str:
    if key.endswith("tokens") and isinstance(value, int) and not isinstance(value, bool):
        return format_tokens(value)
    return json.dumps(value) if not isinstance(value, str) else value
