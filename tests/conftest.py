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


class BlockLibraryCalls:
    """The products each blocked kernel made by each library since the start or the last :meth:`clear`, as
    the kernels count them themselves (``cpu_kernels.block_product_calls``): what a kernel computed with, not
    what the model's attributes say."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        from overtrain.model.cpu_kernels import block_product_calls

        self._before = block_product_calls()

    def by_kernel(self) -> dict[tuple[str, str], int]:
        """Calls by (kernel, library), those that made any."""
        from overtrain.model.cpu_kernels import block_product_calls

        after = block_product_calls()
        return {key: calls - self._before.get(key, 0) for key, calls in after.items() if calls > self._before.get(key, 0)}

    def counts(self) -> dict[str, int]:
        """Calls by library, over the kernels."""
        totals: dict[str, int] = {}
        for (_, library), calls in self.by_kernel().items():
            totals[library] = totals.get(library, 0) + calls
        return totals


@pytest.fixture()
def asked_block_libraries() -> BlockLibraryCalls:
    """The library each blocked kernel (the attention block and the MLP, forward and backward, and the fused
    loss) computed with during the test."""
    return BlockLibraryCalls()
