"""The shape and initialization of the decoder: one typed dataclass, a docstring per field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Shape and initialization of the decoder (Llama architecture, exported as LlamaForCausalLM)."""

    preset: str | None = None
    """Named size from ``overtrain.presets`` (e.g. ``tiny``, ``olmo-30m``); explicit fields below win."""
    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 2
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention heads; ``d_model`` must be divisible by it."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; ``None`` means ``n_heads`` (plain multi-head)."""
    d_ff: int | None = None
    """SwiGLU hidden width; ``None`` means 8/3 * d_model rounded up to a multiple of 32."""
    rope_theta: float = 10_000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding with the output layer."""
    init_std: float = 0.02
    """Std of the normal initialization of every weight matrix (the paper's Sigma for the noise probe)."""
    init_std_overrides: dict[str, float] = field(default_factory=dict)
    """Per-tensor init std by glob over Hugging Face parameter names, e.g. ``{'*o_proj.weight': 0.01}``."""

    @property
    def ff_width(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


def parameter_names(config: ModelConfig) -> list[str]:
    """Hugging Face names of the model's parameters, as ``LlamaLM.named_parameters()`` lists them (a tied
    ``lm_head.weight`` is the embedding, listed once under its name), without building the model."""
    names = ["model.embed_tokens.weight"]
    for layer in range(config.n_layers):
        prefix = f"model.layers.{layer}."
        names.append(prefix + "input_layernorm.weight")
        names += [prefix + f"self_attn.{proj}_proj.weight" for proj in "qkvo"]
        names.append(prefix + "post_attention_layernorm.weight")
        names += [prefix + f"mlp.{proj}_proj.weight" for proj in ("gate", "up", "down")]
    names.append("model.norm.weight")
    if not config.tie_embeddings:
        names.append("lm_head.weight")
    return names
