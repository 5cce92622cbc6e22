"""GPU memory and time of one fine-tuning run, estimated from the model's shape: arithmetic, not a measurement.

Memory per GPU (bytes), for the fine-tuning probe as it runs (fp32 weights, AdamW, bf16 autocast):

- weights 4 B/param, gradients 4, AdamW's two moments 8: **16 bytes per parameter** (the usual
  mixed-precision AdamW count); under ``distributed: fsdp`` divided by the processes;
- autocast's bf16 copies of the weights, kept for the backward pass: 2 B/param (FSDP: of the gathered units);
- DDP (two or more processes) keeps gradient buckets: another 4 B/param;
- FSDP holds gathered units unsharded: the root (embeddings, output layer, final norm; FSDP2 keeps it
  gathered through forward and backward) and two decoder layers (the current one and the prefetched next),
  each in fp32 plus its bf16 copy: 6 B per gathered parameter;
- activations per token of a process's micro-batch: the bytes each decoder layer saves for the backward
  pass, **measured** (:func:`measured_layer_bytes`) on a narrow twin of the same architecture (transformers'
  own class, width ~256 with the real head size and ff/width ratio, 2 and 3 layers, 64 and 128 tokens, bf16
  autocast on the CPU; counted with ``saved_tensors_hooks``, each storage once) and scaled by the width
  ratio (every saved tensor is proportional to the width at a fixed ratio). Where no twin can be built the
  hand count is used: attention h (norm input) + h (norm output) + h + 2 x kv (q, k, v) + h (attention
  output; flash attention keeps no T x T matrix), MLP 2h + 4f, i.e. 2 x (6h + 2kv + 4f) bytes. Measured
  (2026-12-01): OLMo-1B 118,976 B/token/layer, 1.21x that count; OLMo-2-7B 293,248, 1.91x (fp32 norm
  internals; OLMo-2's q/k norms and post-norms). With gradient checkpointing a layer keeps only its input
  (measured: 4h bytes, fp32), plus one layer's full set while it is recomputed. CUDA autocast casts a
  slightly different op list than CPU autocast: the measurement stands for the GPU's, untested there;
- logits: 10 x vocab bytes per token (bf16 logits, their fp32 copy for the loss, the fp32 gradient).

Tokens in memory per process = micro-batch rows x max_len: rows are padded to the longest of the batch, and
the estimate assumes it reaches max_len (an upper bound; short conversations need less).
Not counted: the CUDA context and allocator fragmentation (budget ~1-3 GiB), fp32 residual-stream
copies and norm statistics (~10-20% of the activations), the evaluation passes' memory (smaller than
training's: no gradients or optimizer states, but the whole model on each process).

Time = FLOPs / (GPUs x peak bf16 dense FLOP/s x MFU): training 6 x params x tokens (8 x with gradient
checkpointing, which repeats the forward pass), evaluation 2 x params x tokens (run whole on every process,
so it does not speed up with more GPUs). Attention's own FLOPs are left out (~7% at 4,096 tokens for a 7B
model). MFU (model FLOPs utilisation) is an assumption, 0.35 by default: a setting, not a measurement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
BYTES_PER_PARAMETER_ADAMW = 16
"""fp32 weights (4) + fp32 gradients (4) + AdamW first and second moments (4 + 4)."""
DEFAULT_MFU = 0.35


@dataclass(frozen=True)
class GpuKind:
    name: str
    memory_gib: float
    """Nominal memory (the usable share is ~1-3 GiB less)."""
    peak_bf16_flops: float
    """Dense bf16 peak from the vendor's data sheet, FLOP/s."""


GPUS = {
    "a100": GpuKind("A100 80GB", 80.0, 312e12),
    "h100": GpuKind("H100 SXM 80GB", 80.0, 989e12),
    "h200": GpuKind("H200 141GB", 141e9 / GIB, 989e12),
}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder: its parameter count and the widths that set activations."""

    name: str
    parameters: int
    layers: int
    d_model: int
    ff_width: int
    kv_width: int
    """Key (= value) projection width: kv heads x head dim."""
    vocab_size: int
    root_parameters: int
    """Parameters outside the decoder layers (embeddings, output layer, final norm)."""
    layer_bytes_per_token: tuple[float, float] | None = None
    """Measured bytes one decoder layer saves per token for the backward pass (plain, checkpointed); None:
    the hand count is used."""

    @property
    def layer_parameters(self) -> int:
        return (self.parameters - self.root_parameters) // max(1, self.layers)


PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    # The fields of each repository's config.json that set the shape (allenai/OLMo-1B-hf, allenai/OLMo-2-1124-7B);
    # counted through transformers they give the parameters of docs/families.md (1,176,764,416 and 7,298,617,344).
    "allenai/OLMo-1B-hf": dict(model_type="olmo", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
                               num_key_value_heads=16, vocab_size=50304, max_position_embeddings=2048, tie_word_embeddings=True),
    "allenai/OLMo-2-1124-7B": dict(model_type="olmo2", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=32, vocab_size=100352, max_position_embeddings=4096, tie_word_embeddings=False),
}


def shape_from_hf_config(config: Mapping[str, Any], name: str) -> ModelShape:
    """The shape of a transformers causal LM from its config.json, parameters counted exactly by building
    the model on the meta device (no memory, no weights)."""
    import torch
    import transformers

    from overtrain.probes.finetune_distributed import decoder_layers

    settings = {key: value for key, value in config.items() if key != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **settings)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    total = sum(p.numel() for p in model.parameters())
    layers = decoder_layers(model)
    hidden = int(hf_config.hidden_size)
    heads = int(hf_config.num_attention_heads)
    kv_heads = int(getattr(hf_config, "num_key_value_heads", None) or heads)
    measured = measured_layer_bytes(config)
    return ModelShape(name, total, len(layers), hidden, int(hf_config.intermediate_size), kv_heads * (hidden // heads),
                      int(hf_config.vocab_size), total - sum(p.numel() for p in layers.parameters()), measured)


TWIN_WIDTH = 256


def measured_layer_bytes(config: Mapping[str, Any], tokens: tuple[int, int] = (64, 128)) -> tuple[float, float] | None:
    key = (json.dumps(dict(config), sort_keys=True), tokens)
    if key not in _MEASURED:
        _MEASURED[key] = _measure_layer_bytes(config, tokens)
    return _MEASURED[key]


_MEASURED: dict[tuple, tuple[float, float] | None] = {}
"""One measurement per architecture and process (a family's revisions share it)."""


def _measure_layer_bytes(config: Mapping[str, Any], tokens: tuple[int, int]) -> tuple[float, float] | None:
    """Bytes per token one decoder layer saves for the backward pass (plain, with gradient checkpointing),
    measured on narrow twins of ``config``'s architecture under bf16 autocast on the CPU and scaled to the
    real width: the difference between 2 and 3 layers is one layer, and the difference between two sequence
    lengths removes what does not grow with tokens (autocast's bf16 weight copies, counted apart as
    "bf16 copies"). None when no twin can be built."""
    import torch
    import transformers

    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = hidden // heads
    twin_heads = max(1, TWIN_WIDTH // head_dim)
    kv_ratio = heads // int(config.get("num_key_value_heads") or heads)
    twin = dict(config, hidden_size=twin_heads * head_dim, num_attention_heads=twin_heads, num_key_value_heads=max(1, twin_heads // kv_ratio),
                intermediate_size=max(8, round(int(config["intermediate_size"]) * twin_heads * head_dim / hidden)), vocab_size=256,
                max_position_embeddings=max(tokens))
    twin.pop("eos_token_id", None), twin.pop("pad_token_id", None), twin.pop("bos_token_id", None)
    try:
        counts = {}
        for layers in (2, 3):
            settings = {key: value for key, value in dict(twin, num_hidden_layers=layers).items() if key != "model_type"}
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(config["model_type"], **settings))
            counts[layers] = {(length, checkpointing): _saved_bytes(model, length, checkpointing) for length in tokens for checkpointing in (False, True)}
    except Exception:
        return None
    short, long = tokens
    scale = hidden / twin["hidden_size"] / (long - short)

    def per_token(checkpointing: bool) -> float:
        one_layer = {length: counts[3][(length, checkpointing)] - counts[2][(length, checkpointing)] for length in tokens}
        return (one_layer[long] - one_layer[short]) * scale

    return per_token(False), per_token(True)


def _saved_bytes(model, tokens: int, checkpointing: bool) -> int:
    """Bytes of the distinct storages autograd saves in one bf16-autocast forward of ``tokens`` tokens."""
    import torch

    from overtrain.precision import autocast_context
    from overtrain.probes.finetune_distributed import gradient_checkpointing

    storages: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):  # weights are counted as weights, not activations
            storage = tensor.untyped_storage()
            storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    model.train()
    inputs = torch.randint(0, int(model.config.vocab_size), (1, tokens))
    with gradient_checkpointing(model, checkpointing), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with autocast_context("cpu", "bf16"):
            model(inputs)
    return sum(storages.values())


def shape_of_overtrain_model(run_config: Mapping[str, Any], name: str) -> ModelShape:
    """The shape of one of our checkpoints from its run config (``overtrain.json``)."""
    import torch

    from overtrain.config import build_dataclass
    from overtrain.model.config import ModelConfig
    from overtrain.model.llama import LlamaLM

    model_config = build_dataclass(ModelConfig, dict(run_config["model"]), "model.")
    vocab = int(run_config["data"]["vocab_size"])
    with torch.device("meta"):
        model = LlamaLM(model_config, vocab, int(run_config["train"]["seq_len"]))
    total = model.num_parameters()
    in_layers = sum(p.numel() for p in model.model.layers.parameters())
    head_dim = model_config.d_model // model_config.n_heads
    return ModelShape(name, total, model_config.n_layers, model_config.d_model, model_config.ff_width, model_config.kv_heads * head_dim,
                      vocab, total - in_layers)


def shape_of_reference(reference: str) -> ModelShape | None:
    """The shape of a checkpoint reference without network: our checkpoint folder (overtrain.json), a
    Hugging Face folder (config.json), or ``hf:REPO@REV`` of a repository in :data:`PAPER_CONFIGS`; None
    when it is not known offline."""
    text = str(reference)
    if text.startswith("hf:"):
        repo = text[3:].split("@", 1)[0]
        return shape_from_hf_config(PAPER_CONFIGS[repo], repo) if repo in PAPER_CONFIGS else None
    folder = Path(text).expanduser()
    if (folder / "overtrain.json").is_file():
        return shape_of_overtrain_model(json.loads((folder / "overtrain.json").read_text())["run_config"], folder.name)
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        return shape_from_hf_config(config, folder.name) if "model_type" in config else None
    return None


@dataclass(frozen=True)
class RunShape:
    """The fine-tuning settings that set memory and time (a FinetuneConfig's, or a job spec's ``finetune``)."""

    steps: int
    batch_size: int
    max_len: int
    micro_batch_size: int | None = None
    gradient_checkpointing: bool = False
    distributed: str = "ddp"
    eval_tokens: int = 0
    """Tokens of one pre-training (OOD) loss measurement."""
    heldout_examples: int = 0
    readings: int = 2
    """Measurements of ID and OOD: before, after, and one per WiSE-FT alpha."""

    @classmethod
    def of_spec(cls, finetune: Mapping[str, Any], eval_tokens: int) -> RunShape:
        return cls(int(finetune["steps"]) + int(finetune.get("linear_probe_steps") or 0), int(finetune["batch_size"]), int(finetune["max_len"]),
                   finetune.get("micro_batch_size"), bool(finetune.get("gradient_checkpointing", False)), str(finetune.get("distributed", "ddp")),
                   int(eval_tokens), int(finetune.get("max_heldout") or 200), 2 + len(finetune.get("wise_alphas") or []))


@dataclass(frozen=True)
class FinetuneEstimate:
    """Memory per GPU (bytes, by part) and time of one run on ``gpus`` GPUs of one kind."""

    shape: ModelShape
    gpus: int
    gpu: GpuKind
    mode: str
    """one GPU | ddp | fsdp"""
    memory: dict[str, float]
    train_tokens: int
    eval_tokens: int
    seconds: float
    mfu: float
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.gpu.memory_gib * GIB

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in self.memory.items())
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.gpus} x {self.gpu.name} ({self.mode}): {self.total_bytes / GIB:.1f} GiB per GPU ({parts}) - {verdict}; "
                f"~{self.seconds / 3600:.2f} h per run at MFU {self.mfu:g}")


def estimate_finetune(shape: ModelShape, run: RunShape, gpus: int = 1, gpu: str = "h100", mfu: float = DEFAULT_MFU) -> FinetuneEstimate:
    """Estimate one fine-tuning run of ``shape`` with ``run``'s settings on ``gpus`` GPUs (see the module)."""
    kind = GPUS[gpu]
    params = shape.parameters
    sharded = gpus > 1 and run.distributed == "fsdp"
    mode = "fsdp" if sharded else ("ddp" if gpus > 1 else "one GPU")
    shards = gpus if sharded else 1
    memory = {"weights": 4 * params / shards, "gradients": 4 * params / shards, "adamw": 8 * params / shards}
    if sharded:
        memory["gathered units"] = 6 * (shape.root_parameters + 2 * shape.layer_parameters)
    else:
        memory["bf16 copies"] = 2 * params
        if gpus > 1:
            memory["ddp buckets"] = 4 * params
    rows = run.micro_batch_size or max(1, run.batch_size // gpus)
    tokens_in_memory = rows * run.max_len
    per_layer, kept = shape.layer_bytes_per_token or (2 * (6 * shape.d_model + 2 * shape.kv_width + 4 * shape.ff_width), 4 * shape.d_model)
    if run.gradient_checkpointing:
        memory["activations"] = tokens_in_memory * (shape.layers * kept + per_layer)
    else:
        memory["activations"] = tokens_in_memory * shape.layers * per_layer
    memory["logits"] = tokens_in_memory * 10 * shape.vocab_size
    train_tokens = run.steps * run.batch_size * run.max_len
    eval_tokens = run.readings * (run.eval_tokens + run.heldout_examples * run.max_len)
    train_flops = (8 if run.gradient_checkpointing else 6) * params * train_tokens
    seconds = train_flops / (gpus * kind.peak_bf16_flops * mfu) + 2 * params * eval_tokens / (kind.peak_bf16_flops * mfu)
    return FinetuneEstimate(shape, gpus, kind, mode, memory, train_tokens, eval_tokens, seconds, mfu)
