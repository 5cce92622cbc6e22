"""Test-wide settings: no network, deterministic and small thread pools.

The Hugging Face libraries are told they are offline before anything imports them, so a test that would
reach the Hub fails loudly instead of hanging on this machine's closed network.
"""

from __future__ import annotations

import os

import pytest

for _offline_variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_offline_variable] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")



@pytest.fixture()
def one_torch_thread():
    """Torch on one thread for the test, restored after: tiny tensors, where a thread pool's overhead
    dominates on a loaded machine, and the CPU attention kernel, which is taken on one thread only."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def asked_block_libraries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The library each blocked kernel asks for during the test (the attention block and the MLP, forward
    and backward, and the fused loss), in the order they ask: what a kernel computed with, not what the
    model's attributes say."""
    from overtrain.model import cpu_attention_block, cpu_cross_entropy, cpu_kernels, cpu_mlp

    asked: list[str] = []

    def required_block_products(kernel: str, brgemm: bool) -> int:
        asked.append(cpu_kernels.block_library_of(brgemm))
        return cpu_kernels.required_block_products(kernel, brgemm)

    for module in (cpu_mlp, cpu_attention_block, cpu_cross_entropy):
        monkeypatch.setattr(module, "required_block_products", required_block_products)
    return asked
