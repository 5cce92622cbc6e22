"""A decoder-only language model with the Llama architecture, written to be read and to run fast.

The module tree and parameter names are exactly those of ``transformers.LlamaForCausalLM`` (RMSNorm,
rotary position embeddings in the "rotate half" layout, SwiGLU, no biases), so a state dict moves between
the two without renaming and every checkpoint loads with ``AutoModelForCausalLM.from_pretrained``.
What differs is the code path: fused scaled-dot-product attention, no attention-mask tensors (training
sequences are packed and causal), and a loss computed in one place.

Shapes: B batch, T sequence length, C d_model, H heads, K kv heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals

from overtrain.errors import OvertrainError
from overtrain.model.config import ModelConfig
from overtrain.model.cpu_attention import causal_attention, heads_first, kernel_applies
from overtrain.model.cpu_attention_block import attention_block, block_applies
from overtrain.model.cpu_cross_entropy import linear_cross_entropy, loss_kernel_applies
from overtrain.model.cpu_kernels import BLOCK_LIBRARIES, block_products, kernel_available
from overtrain.model.cpu_linear import LIBRARY_NAMES, ProductTiming, linear, linear_applies, onednn_available, time_products
from overtrain.model.cpu_mlp import mlp_kernel_applies, swiglu_mlp


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (forward or backward, its own or global) around its forward."""
    global_hooks = (module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks
                    or module_globals._global_backward_hooks or module_globals._global_backward_pre_hooks)
    own_hooks = module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    return bool(own_hooks or global_hooks)


def is_plain_linear(layer: nn.Module) -> bool:
    """Whether ``layer(x)`` is exactly ``F.linear(x, layer.weight)``: an ``nn.Linear`` itself (not replaced or
    wrapped, e.g. by a LoRA adapter), without bias or hooks (:func:`has_hooks`). Only such layers may be computed
    from their weight alone (oneDNN's products, the stacked q/k/v product)."""
    return type(layer) is nn.Linear and layer.bias is None and not has_hooks(layer)


def is_plain_norm(norm: nn.Module) -> bool:
    """Whether ``norm(x)`` is exactly :class:`RMSNorm`'s computation from its weight and eps (not replaced or
    wrapped, no hooks): only then may a blocked kernel compute it inside a half-layer."""
    return type(norm) is RMSNorm and not has_hooks(norm)


def project(layer: nn.Module, x: torch.Tensor, onednn: bool) -> torch.Tensor:
    """``layer(x)``, by oneDNN where ``onednn``, it applies (:mod:`overtrain.model.cpu_linear`) and the layer is a
    plain linear layer (:func:`is_plain_linear`); else the module is called, so that its hooks run and a wrapped
    or replaced layer computes as it would."""
    return project_by(layer.weight, x, onednn) if onednn and is_plain_linear(layer) else layer(x)


def project_by(weight: torch.Tensor, x: torch.Tensor, onednn: bool) -> torch.Tensor:
    """``F.linear(x, weight)``, by oneDNN where ``onednn`` and it applies (:func:`linear_applies`)."""
    return linear(x, weight) if onednn and linear_applies(x, weight) else F.linear(x, weight)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 like Llama, then return to the activation dtype before the gain.
        x_fp32 = x.float()
        x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x_fp32.to(x.dtype)


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (T, D) in Llama's layout (the frequency block repeated twice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys; ``rotate_half`` pairs dimension i with i + D/2."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.q_proj = nn.Linear(config.d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)
        self.cpu_kernel = False
        """Use overtrain's CPU attention kernel where it applies (see :func:`LlamaLM.use_cpu_kernels`)."""
        self.onednn_products = False
        """Compute the projections with oneDNN (see :func:`LlamaLM.use_cpu_kernels`)."""
        self.cpu_block = False
        """Compute the whole block (projections and attention) with :mod:`overtrain.model.cpu_attention_block`
        where it applies (see :func:`LlamaLM.use_cpu_kernels`)."""
        self.block_library = "blas"
        """The library of the whole block's products (a key of :data:`~overtrain.model.cpu_kernels.BLOCK_LIBRARIES`)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape  # (B, T, C)
        plain = self.n_kv_heads == self.n_heads and self._projections_are_plain()
        whole = self._whole_block(x, cos, sin, None)
        if whole is not None:
            return whole
        if self.cpu_kernel and plain:
            qkv = self._stacked_projection(x).view(batch, seq_len, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, D)
            if kernel_applies(qkv):  # the kernel rotates q and k itself
                scale, keep = self.head_dim**-0.5, qkv.requires_grad  # no probabilities kept for a pass without gradients
                out = causal_attention(qkv, scale, cos.contiguous(), sin.contiguous(), keep)[0]  # (B, T, H, D)
                return project(self.o_proj, out.reshape(batch, seq_len, -1), self.onednn_products)
            q, k, v = heads_first(qkv)
        else:
            q = self.q_proj(x).view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = self.k_proj(x).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
            v = self.v_proj(x).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return project(self.o_proj, out.transpose(1, 2).reshape(batch, seq_len, -1), self.onednn_products)  # (B, T, C)

    def residual(self, x: torch.Tensor, norm: nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x + self(norm(x), cos, sin)``: the attention half of a decoder layer. Where the whole block applies,
        the norm is a plain :class:`RMSNorm` and nothing hooks this module, one call of the blocked kernel
        computes all of it (the norm and the residual inside its blocks, :mod:`overtrain.model.cpu_attention_block`)."""
        # type(self) is Attention: a subclass's own forward must run
        if type(self) is Attention and is_plain_norm(norm) and not has_hooks(self):
            whole = self._whole_block(x, cos, sin, norm)
            if whole is not None:
                return whole
        return x + self(norm(x), cos, sin)

    def _whole_block(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm: RMSNorm | None) -> torch.Tensor | None:
        """The block by :func:`~overtrain.model.cpu_attention_block.attention_block` (with ``norm``, the
        half-layer ``x + block(norm(x))``), or None where it does not apply."""
        if not (self.cpu_block and self.n_kv_heads == self.n_heads and self._projections_are_plain() and is_plain_linear(self.o_proj)):
            return None
        stacked = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        norm_weights = () if norm is None else (norm.weight,)
        if not block_applies(x, self.n_heads, stacked, self.o_proj.weight, *norm_weights):
            return None
        # no probabilities kept without gradients to make from them
        keep = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in (x, stacked, *norm_weights))
        return attention_block(x, stacked, self.o_proj.weight, cos, sin, norm.weight if norm else None, norm.eps if norm else 0.0,
                               self.n_heads, self.head_dim**-0.5, keep, self.block_library == "brgemm")[0]

    def _projections_are_plain(self) -> bool:
        """Whether q, k and v can be made from their stacked weights (no adapter, bias or hook on any)."""
        return all(is_plain_linear(layer) for layer in (self.q_proj, self.k_proj, self.v_proj))

    def _stacked_projection(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> q, k and v side by side (B, T, 3*H*D), from one product with the three weights stacked:
        at the nano shape one (4096 x 64) @ (64 x 192) product and its two gradient products take ~1.6 ms less
        per layer and step than three of width 64. The weights stay three tensors (transformers' layout). Taken
        by every layer with the CPU kernels on, as many key/value heads as query heads and plain q/k/v
        layers (also where the attention kernel then does not apply, e.g. under autocast); runs without the
        kernels keep three products, so their numerics stay what they were."""
        stacked = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        return project_by(stacked, x, self.onednn_products)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ff_width, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.ff_width, bias=False)
        self.down_proj = nn.Linear(config.ff_width, config.d_model, bias=False)
        self.onednn_products = False
        """Compute the projections with oneDNN (see :func:`LlamaLM.use_cpu_kernels`)."""
        self.cpu_kernel = False
        """Compute the whole MLP with :mod:`overtrain.model.cpu_mlp` where it applies (see :func:`LlamaLM.use_cpu_kernels`)."""
        self.block_library = "blas"
        """The library of the whole MLP's products (a key of :data:`~overtrain.model.cpu_kernels.BLOCK_LIBRARIES`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self._fused(x, None)
        if fused is not None:
            return fused
        onednn = self.onednn_products
        hidden = F.silu(project(self.gate_proj, x, onednn)) * project(self.up_proj, x, onednn)
        return project(self.down_proj, hidden, onednn)

    def residual(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """``x + self(norm(x))``: the MLP half of a decoder layer, in one call of the blocked kernel (the norm and
        the residual inside its blocks, :mod:`overtrain.model.cpu_mlp`) where it applies, the norm is a plain
        :class:`RMSNorm` and nothing hooks this module."""
        if type(self) is MLP and is_plain_norm(norm) and not has_hooks(self):  # a subclass's own forward must run
            fused = self._fused(x, norm)
            if fused is not None:
                return fused
        return x + self(norm(x))

    def _fused(self, x: torch.Tensor, norm: RMSNorm | None) -> torch.Tensor | None:
        """The MLP by :func:`~overtrain.model.cpu_mlp.swiglu_mlp` (with ``norm``, the half-layer
        ``x + mlp(norm(x))``), or None where it does not apply."""
        weights = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        norm_weights = () if norm is None else (norm.weight,)
        if not (self.cpu_kernel and self._projections_are_plain() and mlp_kernel_applies(x, *weights, *norm_weights)):
            return None
        w_gate_up = torch.cat(weights[:2])  # (2F, C): one product for both, as the kernel takes them
        out = swiglu_mlp(x.reshape(-1, x.shape[-1]), w_gate_up, weights[2], norm.weight if norm else None, norm.eps if norm else 0.0,
                         self.block_library == "brgemm")[0]
        return out.view(x.shape)

    def _projections_are_plain(self) -> bool:
        """Whether the MLP can be made from its weights alone (no adapter, bias or hook on any projection)."""
        return all(is_plain_linear(layer) for layer in (self.gate_proj, self.up_proj, self.down_proj))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)): by the blocked kernels'
        # half-layers where they apply; a module replaced by one without them is called as it is
        attention_half = getattr(self.self_attn, "residual", None)
        x = attention_half(x, self.input_layernorm, cos, sin) if attention_half else x + self.self_attn(self.input_layernorm(x), cos, sin)
        mlp_half = getattr(self.mlp, "residual", None)
        return mlp_half(x, self.post_attention_layernorm) if mlp_half else x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Named ``model`` inside :class:`LlamaLM`, as in transformers, so parameter names match."""

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)


class LlamaLM(nn.Module):
    """Causal language model; ``forward(input_ids)`` gives logits (B, T, V)."""

    def __init__(self, config: ModelConfig, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.config, self.vocab_size, self.max_seq_len = config, vocab_size, max_seq_len
        self.model = Backbone(config, vocab_size)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
        self.onednn_products = False
        """The fused loss's products by oneDNN from Python (see :func:`use_cpu_kernels`)."""
        self.block_library = "blas"
        """Else the fused loss's products by this key of :data:`~overtrain.model.cpu_kernels.BLOCK_LIBRARIES`."""
        self.products_library = "blas"
        """The key of :data:`~overtrain.model.cpu_linear.LIBRARY_NAMES` that :func:`use_cpu_kernels` took."""
        self.product_timing: ProductTiming | None = None
        """What :func:`use_cpu_kernels` measured to choose the library of the projections (None: not measured)."""
        self.cpu_loss_kernel = False
        """Compute the training loss with overtrain's fused CPU output layer and cross-entropy where it applies
        (see :func:`use_cpu_kernels`)."""
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rotary_cos_sin(max_seq_len, config.d_model // config.n_heads, config.rope_theta, torch.device("cpu"))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _grow_rotary_tables(self, seq_len: int) -> None:
        """RoPE works at any length; fine-tuning may use longer sequences than pre-training did."""
        head_dim = self.config.d_model // self.config.n_heads
        cos, sin = rotary_cos_sin(seq_len, head_dim, self.config.rope_theta, self.rope_cos.device)
        self.rope_cos, self.rope_sin = cos, sin

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.rope_cos.shape[0]:
            self._grow_rotary_tables(seq_len)
        cos, sin = self.rope_cos[:seq_len], self.rope_sin[:seq_len]
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids))  # (B, T, V)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over targets != ignore_index; logits are upcast to fp32."""
        hidden = self.hidden_states(input_ids)  # (B, T, C)
        if self._loss_kernel_applies(hidden):
            flat_hidden, flat_targets = hidden.flatten(0, 1), targets.flatten()
            return linear_cross_entropy(flat_hidden, self.lm_head.weight, flat_targets, ignore_index, self.onednn_products,
                                        self.block_library == "brgemm")[0]
        logits = self.lm_head(hidden)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)

    def _loss_kernel_applies(self, hidden: torch.Tensor) -> bool:
        """The fused kernel computes the loss's gradients in its forward pass: taken only when they are wanted,
        in fp32 (no autocast, which would make the logits in bf16), on the CPU."""
        return (
            self.cpu_loss_kernel
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(hidden.device.type)
            and loss_kernel_applies(hidden, self.lm_head.weight)
        )

    def use_cpu_kernels(self, enabled: bool = True, library: str | None = None) -> LlamaLM:
        """Compute attention with :mod:`overtrain.model.cpu_attention` where it applies (fp32 on the CPU, head
        dim 16-64, no grouped keys), the training loss's output layer and cross-entropy with
        :mod:`overtrain.model.cpu_cross_entropy` (fp32 on the CPU), and the projections by the library
        ``library`` names (a key of :data:`~overtrain.model.cpu_linear.LIBRARY_NAMES`), or where it is None by
        the one that measures fastest on this CPU (:class:`~overtrain.model.cpu_linear.ProductTiming`):
        ``onednn`` makes them whole, through :mod:`overtrain.model.cpu_linear`; ``blas`` and ``brgemm`` make them
        a few sequences at a time through the whole attention block (:mod:`overtrain.model.cpu_attention_block`)
        and the whole MLP (:mod:`overtrain.model.cpu_mlp`), each with its layer's RMSNorm and residual
        (:meth:`Attention.residual`, :meth:`MLP.residual`), by torch's BLAS sgemm or oneDNN's brgemm
        micro-kernel. They agree to float rounding, not bitwise; off by default, the training loop turns them on
        for compiled runs. Decided here, once: the kernels are built (~40 s, once per machine and torch version) and taken only
        if torch runs one thread now; the libraries are timed (~0.1-0.5 s, once per process and shape;
        :attr:`product_timing` keeps the figures) unless ``library`` says which to take. A library missing
        here falls back to torch's BLAS (:attr:`products_library` says which was taken)."""
        if library is not None and library not in LIBRARY_NAMES:
            raise ValueError(f"unknown product library {library!r} (one of {', '.join(LIBRARY_NAMES)})")
        self.product_timing = self._time_products() if enabled and library is None else None
        library = self.product_timing.library if self.product_timing is not None else library or "blas"
        onednn = enabled and library == "onednn" and onednn_available()
        enabled = enabled and kernel_available()
        usable = enabled and not onednn and library in BLOCK_LIBRARIES and block_products(library) is not None
        block_library = library if usable else "blas"  # brgemm only where it was asked for and can be called
        blocks = enabled and not onednn and block_products(block_library) is not None  # whole blocks, by sgemm or brgemm
        for layer in self.model.layers:
            layer.self_attn.cpu_kernel = enabled
            layer.self_attn.cpu_block = layer.mlp.cpu_kernel = blocks
            layer.self_attn.onednn_products = layer.mlp.onednn_products = onednn
            layer.self_attn.block_library = layer.mlp.block_library = block_library
        self.onednn_products, self.block_library = onednn, block_library
        self.cpu_loss_kernel = enabled and (onednn or blocks)  # its products: oneDNN's, or the blocks' library
        self.products_library = "onednn" if onednn else block_library if blocks else "blas"
        return self

    def _time_products(self) -> ProductTiming:
        """The product libraries on this CPU (oneDNN and torch's BLAS whole, and on one thread the blocked
        kernels' sgemm and brgemm block by block), at this model's widest projection: of 4096 tokens (as a step
        of the demo's shape makes them; oneDNN's ~12 us per call weighs most there) where that is at most
        2^28 FLOP, of fewer (at least 512) for wider models, so that their timing stays well under a second."""
        width, widest = self.config.d_model, max(3 * self.config.d_model, self.config.ff_width)
        rows = max(512, min(4096, 2**27 // (width * widest)))
        return time_products(rows, width, widest, torch.get_num_threads())

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        unique = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in unique.values())
        if exclude_embeddings:
            total -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total


def init_std_by_name(model: LlamaLM) -> dict[str, float]:
    """Each parameter's initialization std (Hugging Face names); 0.0 marks constant-initialized norm gains."""
    config = model.config
    stds = {}
    for name, param in model.named_parameters():
        std = 0.0 if param.ndim == 1 else config.init_std
        for pattern, override in config.init_std_overrides.items():
            if fnmatch.fnmatch(name, pattern):
                std = override
        stds[name] = std
    return stds


@torch.no_grad()
def initialize_weights(model: LlamaLM, generator: torch.Generator) -> dict[str, float]:
    """Draw every matrix from N(0, std^2) and set norm gains to one; returns the std of each tensor."""
    stds = init_std_by_name(model)
    for name, param in model.named_parameters():
        if stds[name] == 0.0:
            param.fill_(1.0)
        else:
            param.normal_(0.0, stds[name], generator=generator)
    return stds


def build_model(config: ModelConfig, vocab_size: int, max_seq_len: int, seed: int) -> tuple[LlamaLM, dict[str, float]]:
    """A freshly initialized model and its per-tensor init stds, deterministic in ``seed``."""
    try:
        model = LlamaLM(config, vocab_size, max_seq_len)
    except (RuntimeError, MemoryError) as error:  # torch's allocator: "can't allocate memory: you tried to allocate N bytes"
        if "alloc" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        raise OvertrainError(
            f"a model of d_model {config.d_model}, {config.n_layers} layers, d_ff {config.ff_width} and vocabulary {vocab_size:,} "
            f"does not fit in this machine's memory ({str(error).splitlines()[0][:160]})",
            "lower model.d_model, model.n_layers or model.d_ff (or pick a smaller model.preset)",
        ) from None
    generator = torch.Generator().manual_seed(seed)
    stds = initialize_weights(model, generator)
    return model, stds


def estimate_flops_per_token(config: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), counting matmuls and attention."""
    head_dim = config.d_model // config.n_heads
    attn_proj = 2 * config.d_model * (config.n_heads + 2 * config.kv_heads) * head_dim + 2 * config.d_model * config.d_model
    mlp = 2 * 3 * config.d_model * config.ff_width
    attention_scores = 2 * 2 * seq_len * config.d_model / 2  # QK^T and AV, causal half
    forward = config.n_layers * (attn_proj + mlp + attention_scores) + 2 * config.d_model * vocab_size
    return 3.0 * forward


def describe_size(model: LlamaLM) -> str:
    total = model.num_parameters()
    non_embedding = model.num_parameters(exclude_embeddings=True)
    return f"{total / 1e6:.2f}M parameters ({non_embedding / 1e6:.2f}M non-embedding)"

