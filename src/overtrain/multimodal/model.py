"""A LLaVA-style vision-language model around any causal LM: projector, spliced image tokens, loss on answers.

Layout of one sequence (B batch, N image tokens, F feature width, C the LM's embedding width)::

    [end-of-text] [N projected image tokens] [prompt tokens] [answer tokens] [end-of-text]

The image features (B, N, F) of the frozen encoder go through the projector, LLaVA-1.5's MLP
``Linear(F, C) -> GELU -> Linear(C, C)``, and are spliced into the prompt's token embeddings right after the
leading end-of-text token (a document start, as in pre-training); the LM runs on ``inputs_embeds``. The
loss is on the answer tokens and the closing end-of-text only.

The LM is our :class:`~overtrain.model.llama.LlamaLM` (run layer by layer on the spliced embeddings) or any
transformers causal LM (``inputs_embeds=``). :func:`save_vision_language_model` writes the LM as a folder
``AutoModelForCausalLM.from_pretrained`` loads, with the projector beside it in ``projector.safetensors``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from overtrain.atomic import atomic_directory
from overtrain.model.llama import LlamaLM

IMAGE_POSITION = 1
"""Index of the first image token: after the leading end-of-text token."""
PROJECTOR_FILE = "projector.safetensors"
VLM_FILE = "vlm.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def make_projector(feature_width: int, embedding_width: int, seed: int) -> nn.Sequential:
    """LLaVA-1.5's projector, 2 layers with GELU, initialized from ``seed`` (PyTorch's default Linear init)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Sequential(nn.Linear(feature_width, embedding_width), nn.GELU(), nn.Linear(embedding_width, embedding_width))
    finally:
        torch.random.set_rng_state(generator_state)


def input_embeddings(lm: nn.Module) -> nn.Embedding:
    """The token embedding table of our LlamaLM or of a transformers model."""
    return lm.model.embed_tokens if isinstance(lm, LlamaLM) else lm.get_input_embeddings()


def embedding_width(lm: nn.Module) -> int:
    return int(input_embeddings(lm).weight.shape[1])


def lm_logits_from_embeds(lm: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of the LM run on (B, T, C) input embeddings."""
    if not isinstance(lm, LlamaLM):
        return lm(inputs_embeds=embeds).logits
    seq_len = embeds.shape[1]
    if seq_len > lm.rope_cos.shape[0]:
        lm._grow_rotary_tables(seq_len)  # RoPE works at any length (as LlamaLM.hidden_states does)
    cos, sin = lm.rope_cos[:seq_len], lm.rope_sin[:seq_len]
    x = embeds
    for layer in lm.model.layers:
        x = layer(x, cos, sin)
    return lm.lm_head(lm.model.norm(x))


class VisionLanguageModel(nn.Module):
    """``lm`` + ``projector``; the encoder stays outside (its features are cached, it is frozen)."""

    def __init__(self, lm: nn.Module, feature_width: int, image_tokens: int, end_of_text_id: int, seed: int = 0) -> None:
        super().__init__()
        self.lm = lm
        self.projector = make_projector(feature_width, embedding_width(lm), seed)
        self.image_tokens, self.end_of_text_id = image_tokens, end_of_text_id

    def spliced_embeddings(self, features: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N + T, C): end-of-text, projected image tokens, then the text's embeddings."""
        table = input_embeddings(self.lm)
        start = table(torch.full((text_ids.shape[0], 1), self.end_of_text_id, dtype=torch.long, device=text_ids.device))
        image = self.projector(features.to(table.weight.dtype))  # (B, N, C)
        return torch.cat([start, image, table(text_ids)], dim=1)

    def forward(self, features: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) at the text positions only (the image positions predict nothing)."""
        logits = lm_logits_from_embeds(self.lm, self.spliced_embeddings(features, text_ids))
        return logits[:, IMAGE_POSITION + features.shape[1] :]

    def trainable_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage 1: the projector only. Stage 2: the projector and the LM (each tied tensor once)."""
        parameters = list(self.projector.parameters())
        if stage == 2:
            parameters += list({id(p): p for p in self.lm.parameters()}.values())
        return parameters


@torch.no_grad()
def greedy_answers(model: VisionLanguageModel, features: torch.Tensor, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt after its image, up to end-of-text or ``max_new_tokens``.

    ``features`` (B, N, F) and ``prompts`` (B lists of token ids) pair up; prompts of equal length run as one
    batch (no padding, so the answer of a row never depends on the others).
    """
    model.eval()
    answers: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(row)
    table = input_embeddings(model.lm)
    for rows in by_length.values():
        ids = torch.tensor([prompts[row] for row in rows], dtype=torch.long)
        embeds = model.spliced_embeddings(features[rows], ids)
        done = torch.zeros(len(rows), dtype=torch.bool)
        for _ in range(max_new_tokens):
            next_ids = lm_logits_from_embeds(model.lm, embeds)[:, -1].argmax(-1)  # (B,)
            for position, row in enumerate(rows):
                if not done[position]:
                    if int(next_ids[position]) == model.end_of_text_id:
                        done[position] = True
                    else:
                        answers[row].append(int(next_ids[position]))
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, table(next_ids)[:, None]], dim=1)
    return answers


def save_vision_language_model(model: VisionLanguageModel, folder: Path, tokenizer_folder: Path, settings: dict) -> Path:
    """Write the LM (loads with ``AutoModelForCausalLM.from_pretrained(folder)``), its tokenizer, the projector
    (``projector.safetensors``) and ``vlm.json`` (encoder, image tokens, prompts: ``settings``), atomically."""
    from overtrain.checkpoints.folder import hf_llama_config, model_tensors

    with atomic_directory(Path(folder)) as staging:
        if isinstance(model.lm, LlamaLM):
            save_file(model_tensors(model.lm), staging / "model.safetensors", metadata={"format": "pt"})
            hf_llama_config(model.lm, model.end_of_text_id).save_pretrained(staging)
        else:
            model.lm.save_pretrained(staging, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_folder) / name).is_file():
                shutil.copy2(Path(tokenizer_folder) / name, staging / name)
        save_file({name: p.detach().contiguous() for name, p in model.projector.state_dict().items()}, staging / PROJECTOR_FILE)
        (staging / VLM_FILE).write_text(json.dumps({**settings, "image_tokens": model.image_tokens, "end_of_text_id": model.end_of_text_id,
                                                    "image_position": IMAGE_POSITION}, indent=2))
    return Path(folder)


def load_vision_language_model(folder: Path) -> tuple[VisionLanguageModel, dict]:
    """A saved model: the LM through ``AutoModelForCausalLM`` (as any user would load it) and the projector."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    settings = json.loads((folder / VLM_FILE).read_text())
    lm = AutoModelForCausalLM.from_pretrained(folder)
    projector_state = load_file(str(folder / PROJECTOR_FILE))
    feature_width = int(projector_state["0.weight"].shape[1])
    model = VisionLanguageModel(lm, feature_width, int(settings["image_tokens"]), int(settings["end_of_text_id"]))
    model.projector.load_state_dict(projector_state)
    return model.eval(), settings

