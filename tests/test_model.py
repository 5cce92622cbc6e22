"""Our model is LlamaForCausalLM: same parameter names, same logits for the same weights."""

from __future__ import annotations

import pytest
import torch

from overtrain.checkpoints.folder import hf_llama_config
from overtrain.model.config import ModelConfig
from overtrain.model.llama import build_model, init_std_by_name
from overtrain.model.presets import MODEL_PRESETS, preset_fields_are_valid

SHAPES = {
    "untied": ModelConfig(d_model=32, n_layers=2, n_heads=4),
    "tied": ModelConfig(d_model=32, n_layers=2, n_heads=4, tie_embeddings=True),
    "grouped-query": ModelConfig(d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=80, rope_theta=500.0),
}


@pytest.mark.parametrize("name", SHAPES)
def test_logits_match_transformers_llama(name: str) -> None:
    from transformers import LlamaForCausalLM

    config = SHAPES[name]
    ours, _ = build_model(config, vocab_size=97, max_seq_len=24, seed=3)
    theirs = LlamaForCausalLM(hf_llama_config(ours, end_of_text_id=0)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    input_ids = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_logits = ours.eval()(input_ids)
        theirs_logits = theirs(input_ids).logits
    assert ours_logits.shape == (3, 24, 97)
    torch.testing.assert_close(ours_logits, theirs_logits, atol=2e-5, rtol=1e-4)


def test_parameter_names_are_hf_llama_names() -> None:
    from transformers import LlamaForCausalLM

    ours, _ = build_model(SHAPES["untied"], vocab_size=50, max_seq_len=8, seed=0)
    theirs = LlamaForCausalLM(hf_llama_config(ours, end_of_text_id=0))
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_initialization_records_each_tensor_std() -> None:
    config = ModelConfig(d_model=32, n_layers=1, n_heads=2, init_std=0.05, init_std_overrides={"*o_proj.weight": 0.01})
    model, stds = build_model(config, vocab_size=4000, max_seq_len=8, seed=0)
    assert stds == init_std_by_name(model)
    assert stds["model.layers.0.self_attn.o_proj.weight"] == 0.01
    assert stds["model.layers.0.input_layernorm.weight"] == 0.0  # constant init: the noise probe skips it
    assert torch.all(model.model.norm.weight == 1.0)
    embedding_std = float(model.model.embed_tokens.weight.detach().std())
    assert abs(embedding_std - 0.05) < 0.002


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    first, _ = build_model(SHAPES["tied"], 64, 8, seed=1)
    second, _ = build_model(SHAPES["tied"], 64, 8, seed=1)
    third, _ = build_model(SHAPES["tied"], 64, 8, seed=2)
    assert torch.equal(first.lm_head.weight, second.lm_head.weight)
    assert not torch.equal(first.lm_head.weight, third.lm_head.weight)


def test_presets_name_real_fields() -> None:
    assert preset_fields_are_valid()
    assert {"olmo-15m", "olmo-30m", "olmo-60m", "olmo-90m", "nano"} <= set(MODEL_PRESETS)


@pytest.mark.parametrize("name", SHAPES)
def test_parameter_names_without_building_match_the_model(name: str) -> None:
    from overtrain.model.config import parameter_names

    model, _ = build_model(SHAPES[name], vocab_size=50, max_seq_len=8, seed=0)
    assert parameter_names(SHAPES[name]) == [name for name, _ in model.named_parameters()]
