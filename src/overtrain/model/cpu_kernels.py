"""overtrain's C++ kernels for one CPU thread: built on first use, loaded through ctypes.

The sources (``cpu_attention.cpp``, ``cpu_attention_block.cpp``, ``cpu_cross_entropy.cpp``, ``cpu_mlp.cpp``
and the headers they share) are compiled with the system C++ compiler (the one ``torch.compile`` already
needs) into one library under ``~/.cache/overtrain/kernels`` (``OVERTRAIN_KERNEL_DIR`` overrides), keyed by
the sources, the flags and the CPU. No torch headers, so it builds in seconds. Where it cannot be built, :func:`kernel_library`
warns once and returns None, and callers use torch's operations instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "cpu_attention.cpp", FOLDER / "cpu_attention_block.cpp", FOLDER / "cpu_cross_entropy.cpp", FOLDER / "cpu_mlp.cpp")
HEADERS = (FOLDER / "cpu_vector_math.h", FOLDER / "cpu_blas.h")
_POINTER, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(wanted)))


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _declare_signatures(library: ctypes.CDLL) -> ctypes.CDLL:
    library.ot_causal_attention_forward.argtypes = [_POINTER, _INT, _INT, _INT] * 4 + [_POINTER] * 4 + [_INT] * 4 + [_FLOAT]
    library.ot_causal_attention_backward.argtypes = (
        [_POINTER, _INT, _INT, _INT] * 5 + [_POINTER] * 5 + [_INT] * 3 + [_POINTER] * 2 + [_INT] * 4 + [_FLOAT]
    )
    library.ot_causal_attention_probability_floats.argtypes = [_INT]
    library.ot_causal_attention_probability_floats.restype = _INT
    library.ot_linear_cross_entropy.argtypes = [_POINTER] * 7 + [_INT] * 5 + [_FLOAT]
    library.ot_linear_cross_entropy.restype = ctypes.c_double
    library.ot_softmax_cross_entropy_rows.argtypes = [_POINTER, _INT, _INT, _POINTER, _INT, _FLOAT]
    library.ot_softmax_cross_entropy_rows.restype = ctypes.c_double
    library.ot_swiglu_mlp_forward.argtypes = [_POINTER] * 7 + [_INT] * 4
    library.ot_swiglu_mlp_backward.argtypes = [_POINTER] * 11 + [_INT] * 4
    library.ot_attention_block_forward.argtypes = [_POINTER] * 11 + [_INT] * 7 + [_FLOAT]
    library.ot_attention_block_backward.argtypes = [_POINTER] * 14 + [_INT] * 7 + [_FLOAT]
    return library


@functools.lru_cache(maxsize=1)
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None (with one warning) where that fails."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c++17", f"-I{FOLDER}"]
    text = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(text + " ".join(flags[:-1]).encode() + _cpu_identity().encode()).hexdigest()[:16]
    folder = Path(os.environ.get("OVERTRAIN_KERNEL_DIR") or Path.home() / ".cache" / "overtrain" / "kernels")
    library = folder / f"overtrain-cpu-{digest}.so"
    try:
        if not library.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as scratch:  # build aside, then rename: never a torn .so
                built = Path(scratch) / library.name
                subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(built)], check=True, capture_output=True, text=True)
                os.replace(built, library)
        return _declare_signatures(ctypes.CDLL(str(library)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        warnings.warn(f"overtrain: the CPU kernels could not be built ({detail.strip()[:300]}); using torch's operations")
        return None


_SGEMM = ctypes.CFUNCTYPE(None, *[ctypes.c_char_p] * 2, *[ctypes.POINTER(ctypes.c_int)] * 3, ctypes.POINTER(ctypes.c_float),
                          _POINTER, ctypes.POINTER(ctypes.c_int), _POINTER, ctypes.POINTER(ctypes.c_int),
                          ctypes.POINTER(ctypes.c_float), _POINTER, ctypes.POINTER(ctypes.c_int))


def _sgemm_agrees_with_torch(address: int) -> bool:
    """One small non-square product with a transpose, as the kernels call it (32-bit integers, row-major
    through the column-major interface), against torch's: a BLAS with another calling convention is refused."""
    a, b = torch.arange(21.0).reshape(3, 7).sin(), torch.arange(35.0).reshape(5, 7).cos()  # no draw from torch's RNG
    c = torch.zeros(3, 5)  # row-major c = a @ b.T is column-major c.T = b @ a.T: sgemm('T', 'N', 5, 3, 7, ...)
    m, n, k, one, zero = ctypes.c_int(5), ctypes.c_int(3), ctypes.c_int(7), ctypes.c_float(1.0), ctypes.c_float(0.0)
    _SGEMM(address)(b"T", b"N", m, n, k, one, b.data_ptr(), k, a.data_ptr(), k, zero, c.data_ptr(), m)
    return torch.allclose(c, a @ b.T, atol=1e-5)


@functools.lru_cache(maxsize=1)
def blas_sgemm() -> int | None:
    """Address of the Fortran BLAS ``sgemm_`` (32-bit integers) that torch links (MKL in the x86 wheels), for
    kernels that run products block by block between their own loops; None where torch's library exports
    none, or one that does not compute a test product as torch does."""
    torch_library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        address = ctypes.cast(ctypes.CDLL(str(torch_library)).sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    return address if _sgemm_agrees_with_torch(address) else None


def kernel_available() -> bool:
    """Whether the kernels are worth taking here, building (or finding) them now: torch runs one CPU thread
    (torch's operations use every thread, these kernels one) and they build on this machine."""
    return torch.get_num_threads() == 1 and kernel_library() is not None


def fp32_cpu_outside_autocast(*tensors: torch.Tensor) -> bool:
    """Whether kernels that make their products from fp32 inputs apply: every tensor fp32 on the CPU, and no
    CPU autocast (under which torch's products would be bf16). Only tensor properties and the autocast state,
    so torch.compile traces it without a break."""
    return not torch.is_autocast_enabled("cpu") and all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 for tensor in tensors)


def required_blas_sgemm(kernel: str) -> int:
    """:func:`blas_sgemm` for a kernel that cannot run without it (and the built library), or a RuntimeError
    saying so: the model asks for both before it takes such a kernel (LlamaLM.use_cpu_kernels)."""
    sgemm = blas_sgemm()
    if sgemm is None or kernel_library() is None:
        raise RuntimeError(f"{kernel} needs overtrain's CPU kernels and torch's BLAS sgemm_; LlamaLM.use_cpu_kernels "
                           "takes torch's operations where either is missing")
    return sgemm
