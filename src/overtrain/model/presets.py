"""Named model sizes, from a CPU toy to the paper's OLMo shapes.

The paper trains OLMo-architecture models of 15M, 30M, 60M and 90M parameters but publishes no shapes;
the ``olmo-*`` presets below are our choice, sized to those counts with the OLMo tokenizer's vocabulary
(50,304, tied embeddings): 14.9M, 29.9M, 63.7M and 91.7M parameters. ``olmo-20m`` (19.3M) is the
group's public OLMo-20M shape: d_model 256, 8 layers, 8 heads. Parameter counts at other vocabularies
differ: ``overtrain pretrain --dry-run`` prints the real count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from overtrain.errors import OvertrainError

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # CPU sizes; parameter counts at vocab 2048: nano 0.24M, tiny 0.53M, small 1.3M, base-cpu 4.3M.
    "nano": {"d_model": 64, "n_layers": 2, "n_heads": 4, "tie_embeddings": True},
    "tiny": {"d_model": 96, "n_layers": 3, "n_heads": 4, "tie_embeddings": True},
    "small": {"d_model": 128, "n_layers": 4, "n_heads": 4},
    "base-cpu": {"d_model": 256, "n_layers": 4, "n_heads": 8},
    "olmo-15m": {"d_model": 224, "n_layers": 6, "n_heads": 7, "tie_embeddings": True},
    "olmo-20m": {"d_model": 256, "n_layers": 8, "n_heads": 8, "tie_embeddings": True},
    "olmo-30m": {"d_model": 384, "n_layers": 6, "n_heads": 6, "tie_embeddings": True},
    "olmo-60m": {"d_model": 512, "n_layers": 12, "n_heads": 8, "tie_embeddings": True},
    "olmo-90m": {"d_model": 640, "n_layers": 12, "n_heads": 10, "tie_embeddings": True},
    }


def apply_preset(model_section: dict[str, Any]) -> dict[str, Any]:
    """Expand ``preset: NAME`` into its fields; keys given explicitly next to it win."""
    name = model_section.get("preset")
    if name is None:
        return model_section
    if name not in MODEL_PRESETS:
        raise OvertrainError(
            f"unknown model preset {name!r}", f"use one of {', '.join(MODEL_PRESETS)} or give d_model/n_layers/n_heads"
        )
    return {**MODEL_PRESETS[name], **model_section}


def preset_fields_are_valid() -> bool:
    """Every preset names only real ModelConfig fields (checked by the tests)."""
    from overtrain.model.config import ModelConfig

    known = {field.name for field in dataclasses.fields(ModelConfig)}
    return all(set(fields) <= known for fields in MODEL_PRESETS.values())
