"""Which dtype a device computes in: bf16 where the hardware has it natively, fp32 elsewhere."""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles for bf16 (``amx_bf16`` in /proc/cpuinfo), where bf16 matmuls beat fp32.

    AVX512-BF16 alone is not enough: on a Xeon with AVX512-BF16 but no AMX (measured 2026-12-01, one
    thread) bf16 matmuls ran at 15-75 GFLOP/s against fp32's 69-144 GFLOP/s at sizes 64-2048, and the
    demo's nano training step at 14.5k tokens/s against 31.7k in fp32. The choice is read from the
    flags, not timed at start-up, so the same machine always picks the same dtype.
    """
    return "amx_bf16" in _cpu_flags()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return ""


def resolve_dtype(dtype: str, device: torch.device | str) -> str:
    """``auto`` -> bf16 on CUDA (where supported) and on CPUs with AMX, else fp32."""
    if dtype != "auto":
        return dtype
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast_context(device: torch.device | str, dtype: str) -> contextlib.AbstractContextManager:
    device_type = torch.device(device).type
    if resolve_dtype(dtype, device) == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
