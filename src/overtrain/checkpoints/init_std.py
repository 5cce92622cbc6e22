"""Each tensor's initialization std, which init-scaled noise (``mode=init``) multiplies by gamma.

Sources, in order (a later one overrides an earlier one):

1. the checkpoint's own record (``overtrain.json`` of our checkpoints), or, for foreign models, the
   per-family table below, chosen by ``model_type`` in config.json;
2. user rules ``{glob over parameter names: std}``, applied in order, the last match winning.

Norm gains and biases (every 1-D tensor) get std 0: they were initialized to constants, so init-scaled
noise leaves them alone. The table and its sources are documented in docs/any_model.md:

- ``llama``, ``mistral``, ``qwen2``, ``olmo2``: every matrix N(0, initializer_range) from config.json
  (transformers' ``_init_weights`` for these classes; OLMo-2's paper: every parameter from N(0, 0.02)).
- ``olmo`` (OLMo-1, trained with ``init_fn: mitchell``): 1/sqrt(d_in) for embeddings, q/k/v, gate/up and
  the output layer; the block outputs scaled by 1/sqrt(2 (layer + 1)): o_proj 1/sqrt(2 d (l + 1)),
  down_proj 1/sqrt(2 d_ff (l + 1)).
- ``gpt_neox`` (Pythia, GPT-NeoX-20B: ``small_init`` and ``wang_init``): sqrt(2 / (5 d)) for embed_in,
  query_key_value, dense_h_to_4h and embed_out; 2 / (n_layers sqrt(d)) for attention.dense and
  dense_4h_to_h.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from overtrain.errors import OvertrainError

Shapes = Mapping[str, tuple[int, ...]]
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class InitStd:
    """Per-tensor init stds, or ``None`` with the reason none are known."""

    stds: dict[str, float] | None
    source: str
    """Where the stds come from (``overtrain.json``, ``family table: olmo``...) or why there are none."""


def _layer(name: str) -> int:
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else 0


def _initializer_range(config: Mapping[str, Any], shapes: Shapes) -> dict[str, float]:
    std = float(config.get("initializer_range", 0.02))
    return {name: std for name in shapes}


def _olmo_mitchell(config: Mapping[str, Any], shapes: Shapes) -> dict[str, float]:
    d, d_ff = int(config["hidden_size"]), int(config["intermediate_size"])
    stds = {}
    for name in shapes:
        if name.endswith("o_proj.weight"):
            stds[name] = 1.0 / math.sqrt(2 * d * (_layer(name) + 1))
        elif name.endswith("down_proj.weight"):
            stds[name] = 1.0 / math.sqrt(2 * d_ff * (_layer(name) + 1))
        else:
            stds[name] = 1.0 / math.sqrt(d)
    return stds


def _gpt_neox_small_wang(config: Mapping[str, Any], shapes: Shapes) -> dict[str, float]:
    d, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    small, wang = math.sqrt(2.0 / (5 * d)), 2.0 / (layers * math.sqrt(d))
    return {name: wang if name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")) else small for name in shapes}


FAMILY_TABLE: dict[str, Callable[[Mapping[str, Any], Shapes], dict[str, float]]] = {
    "llama": _initializer_range,
    "mistral": _initializer_range,
    "qwen2": _initializer_range,
    "olmo2": _initializer_range,
    "olmo": _olmo_mitchell,
    "gpt_neox": _gpt_neox_small_wang,
}


def family_init_std(config: Mapping[str, Any], shapes: Shapes) -> InitStd:
    """Init stds of a foreign model from the per-family table (1-D tensors get 0)."""
    model_type = str(config.get("model_type", ""))
    rule = FAMILY_TABLE.get(model_type)
    if rule is None:
        known = ", ".join(sorted(FAMILY_TABLE))
        return InitStd(None, f"no init-std table for model_type {model_type!r} (known: {known})")
    matrices = {name: shape for name, shape in shapes.items() if len(shape) >= 2}
    stds = {name: 0.0 for name in shapes} | rule(config, matrices)
    return InitStd(stds, f"family table: {model_type}")


def apply_init_std_rules(base: InitStd, rules: Mapping[str, float] | None, shapes: Shapes) -> InitStd:
    """``base`` with the user's glob rules applied; without a base, the rules must cover every matrix."""
    if not rules:
        return base
    for pattern, std in rules.items():
        if not (isinstance(std, (int, float)) and std >= 0):
            raise OvertrainError(f"init std rule {pattern!r}: {std!r} is not a number >= 0", "write rules as {'GLOB': STD}, e.g. {'*': 0.02}")
    stds = dict(base.stds) if base.stds is not None else {}
    for name, shape in shapes.items():
        for pattern, std in rules.items():
            if fnmatch.fnmatch(name, pattern):
                stds[name] = 0.0 if len(shape) < 2 else float(std)
        if len(shape) < 2:
            stds[name] = 0.0
    uncovered = sorted(name for name in shapes if name not in stds)
    if uncovered:
        raise OvertrainError(
            f"the init std rules cover no rule for {len(uncovered)} tensors, e.g. {uncovered[:3]} ({base.source})",
            "add a catch-all rule such as {'*': 0.02} after the specific ones, or use mode=relative",
        )
    return InitStd(stds, f"{base.source if base.stds is not None else 'no table'} + user rules")
