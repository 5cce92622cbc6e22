"""Which dtype a device computes in: bf16 where the hardware has it natively, fp32 elsewhere."""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls beat fp32 (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device | str) -> str:
    """``auto`` -> bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if dtype != "auto":
        return dtype
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast_context(device: torch.device | str, dtype: str) -> contextlib.AbstractContextManager:
    device_type = torch.device(device).type
    if resolve_dtype(dtype, device) == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
