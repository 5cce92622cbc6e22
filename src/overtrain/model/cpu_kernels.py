"""overtrain's C++ kernels for one CPU thread: built on first use, loaded through ctypes.

The sources (``cpu_attention.cpp``, ``cpu_attention_block.cpp``, ``cpu_cross_entropy.cpp``, ``cpu_mlp.cpp``,
``cpu_products.cpp``, ``cpu_ops.cpp`` and the headers they share) are compiled with the system C++ compiler (the
one ``torch.compile`` already needs) into one library under ``~/.cache/overtrain/kernels``
(``OVERTRAIN_KERNEL_DIR`` overrides), keyed by the sources, the flags, torch's version and the CPU. The
kernels themselves use no torch headers; ``cpu_ops.cpp``, built with them, registers the blocked kernels as
torch operators with their autograd formulas in C++, so that a compiled step calls them without Python (their
schemas and fake kernels are defined in Python, by :mod:`~overtrain.model.cpu_mlp`,
:mod:`~overtrain.model.cpu_attention_block` and :mod:`~overtrain.model.cpu_cross_entropy`). A first build takes
~40 s on two cores (torch's headers, most of it), then it is cached. Where the operators cannot be built
(torch's headers do not compile here, say), the kernels are built without them, in seconds: the blocked
kernels are then off (:func:`block_products` is None) and the others stay. Where nothing can be built,
:func:`kernel_library` warns once and returns None, and callers use torch's operations instead.

The blocked kernels make their products by one of two libraries that torch links, found here by address
(cpu_blas.h): the Fortran BLAS ``sgemm_`` (:func:`blas_sgemm`) and oneDNN's fp32 brgemm micro-kernel
(:func:`onednn_brgemm`); :func:`block_products` hands either to them.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from overtrain.atomic import atomic_write_text

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "cpu_attention.cpp", FOLDER / "cpu_attention_block.cpp", FOLDER / "cpu_cross_entropy.cpp", FOLDER / "cpu_mlp.cpp",
           FOLDER / "cpu_products.cpp", FOLDER / "cpu_ops.cpp")
HEADERS = (FOLDER / "cpu_vector_math.h", FOLDER / "cpu_blas.h", FOLDER / "cpu_rms_norm.h")
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
    library.ot_linear_cross_entropy.argtypes = [_POINTER] * 7 + [_INT] * 5 + [_FLOAT, _POINTER]
    library.ot_linear_cross_entropy.restype = ctypes.c_int
    library.ot_softmax_cross_entropy_rows.argtypes = [_POINTER, _INT, _INT, _POINTER, _INT, _FLOAT]
    library.ot_softmax_cross_entropy_rows.restype = ctypes.c_double
    library.ot_swiglu_mlp_forward.argtypes = [_POINTER] * 3 + [_FLOAT] + [_POINTER] * 5 + [_INT] * 4
    library.ot_swiglu_mlp_forward.restype = ctypes.c_int
    library.ot_swiglu_mlp_backward.argtypes = [_POINTER] * 4 + [_FLOAT] + [_POINTER] * 9 + [_INT] * 4
    library.ot_swiglu_mlp_backward.restype = ctypes.c_int
    library.ot_block_products_check.argtypes = [_POINTER] * 7 + [_INT] * 4
    library.ot_block_products_check.restype = ctypes.c_int
    library.ot_attention_block_forward.argtypes = [_POINTER] * 3 + [_FLOAT] + [_POINTER] * 9 + [_INT] * 7 + [_FLOAT]
    library.ot_attention_block_backward.argtypes = [_POINTER] * 4 + [_FLOAT] + [_POINTER] * 12 + [_INT] * 7 + [_FLOAT]
    if hasattr(library, "ot_set_block_products"):  # built with the torch operators (cpu_ops.cpp)
        library.ot_set_block_products.argtypes = [_INT, _POINTER, _POINTER]
        library.ot_set_block_products.restype = None
        library.ot_block_product_calls.argtypes = [_INT, _INT]
        library.ot_block_product_calls.restype = _INT
    return library


def _torch_build_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags for cpu_ops.cpp, which includes torch's headers and calls its libraries: the
    headers' folders, the C++ ABI torch was built with, and torch's libraries (found again at load time by
    the rpath, wherever this torch is installed)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    compile_flags = [f"-I{folder}" for folder in include_paths()] + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    link_flags = [flag for folder in library_paths() for flag in (f"-L{folder}", f"-Wl,-rpath,{folder}")] + ["-lc10", "-ltorch_cpu"]
    return compile_flags, link_flags


@dataclass(frozen=True)
class _BuildPlan:
    """How one variant of the library is built, and where it lies (its name keyed by what it is built from)."""

    compiler: str
    flags: tuple[str, ...]
    sources: tuple[Path, ...]
    link_flags: tuple[str, ...]
    library: Path

    @property
    def failure_note(self) -> Path:
        """Where a failed build leaves its compiler error, so that later processes do not spend the build again."""
        return self.library.with_suffix(".failed")

    def build(self) -> None:
        """Compile the library unless another process has (or has failed to) meanwhile: processes that start at
        once (a sweep's workers, DDP's ranks, test workers) wait for the first one's build instead of each
        spending their own (~40 s on two cores)."""
        self.library.parent.mkdir(parents=True, exist_ok=True)
        with open(self.library.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its holder dies
            if self.library.exists():
                return
            if self.failure_note.exists():
                raise OSError(self.failure_note.read_text())
            with tempfile.TemporaryDirectory(dir=self.library.parent) as scratch:  # build aside, then rename: never a torn .so
                built = Path(scratch) / self.library.name
                subprocess.run([self.compiler, *self.flags, *map(str, self.sources), "-o", str(built), *self.link_flags], check=True,
                               capture_output=True, text=True)
                os.replace(built, self.library)


def _plan(compiler: str, sources: tuple[Path, ...], standard: str, compile_flags: list[str], link_flags: list[str],
          name: str) -> _BuildPlan:
    flags = ["-O3", "-march=native", "-fPIC", "-shared", f"-std={standard}", *compile_flags]
    text = b"".join(path.read_bytes() for path in (*sources, *HEADERS))
    build_identity = " ".join([*flags, *link_flags, torch.__version__]) + _cpu_identity()  # not where the sources lie
    digest = hashlib.sha256(text + build_identity.encode()).hexdigest()[:16]
    folder = Path(os.environ.get("OVERTRAIN_KERNEL_DIR") or Path.home() / ".cache" / "overtrain" / "kernels")
    return _BuildPlan(compiler, (*flags, f"-I{FOLDER}"), sources, tuple(link_flags), folder / f"{name}-{digest}.so")


@functools.lru_cache(maxsize=1)
def _build_plans() -> tuple[_BuildPlan, ...]:
    """The library with the torch operators of cpu_ops.cpp, then the kernels alone (no torch headers); none
    where the kernels are not built on this platform."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return ()
    compiler = _compiler()
    if compiler is None:
        return ()
    kernels_alone = _plan(compiler, SOURCES[:-1], "c++17", [], [], "overtrain-cpu-kernels")
    try:
        torch_compile_flags, torch_link_flags = _torch_build_flags()
    except (ImportError, OSError):  # torch's build helpers (setuptools) missing: the kernels alone
        return (kernels_alone,)
    return _plan(compiler, SOURCES, "c++20", torch_compile_flags, torch_link_flags, "overtrain-cpu"), kernels_alone


def kernel_library_needs_building() -> bool:
    """Whether :func:`kernel_library` would compile the kernels now (~40 s on two cores, torch's headers
    most of it): once per machine, torch version and change of the sources. For a log line before the wait."""
    plans = _build_plans()
    return (kernel_library.cache_info().currsize == 0 and bool(plans) and not plans[0].library.exists()
            and not plans[0].failure_note.exists())


def _first_compiler_error(detail: str) -> str:
    """The line that says what failed: the compiler's first error (not the context lines before it, nor the
    linker driver's summary)."""
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    wanted = [line for line in lines if ("error" in line or "undefined reference" in line) and not line.startswith("collect2")]
    return (wanted or lines or ["no message"])[0][:300]


@functools.lru_cache(maxsize=1)
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None (with one warning) where that fails. Where only
    the torch operators fail to build, the kernels without them (one warning saying what is off and why)."""
    plans = _build_plans()
    for index, plan in enumerate(plans):
        if plan.failure_note.exists():
            detail = plan.failure_note.read_text()
        else:
            try:
                if not plan.library.exists():
                    plan.build()
                return _declare_signatures(ctypes.CDLL(str(plan.library)))
            except (OSError, subprocess.CalledProcessError) as error:
                detail = _first_compiler_error(getattr(error, "stderr", "") or str(error))
                try:
                    atomic_write_text(plan.failure_note, detail)
                except OSError:  # an unwritable folder: later processes try again
                    pass
        if index + 1 < len(plans):
            warnings.warn(f"overtrain: the CPU kernels' torch operators could not be built ({detail}); the blocked kernels are "
                          f"off, the others are built without them (delete {plan.failure_note} to try again)")
        else:
            warnings.warn(f"overtrain: the CPU kernels could not be built ({detail}); using torch's operations "
                          f"(delete {plan.failure_note} to try again)")
    return None


def operators_available() -> bool:
    """Whether the built kernels include the torch operators of ``cpu_ops.cpp`` (the blocked kernels)."""
    library = kernel_library()
    return library is not None and hasattr(library, "ot_set_block_products")


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


def _torch_cpu_symbol(name: str) -> int | None:
    """Address of an exported symbol of torch's CPU library (libtorch_cpu.so); None where it has none."""
    try:
        return ctypes.cast(getattr(ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")), name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def blas_sgemm() -> int | None:
    """Address of the Fortran BLAS ``sgemm_`` (32-bit integers) that torch links (MKL in the x86 wheels), for
    kernels that run products block by block between their own loops; None where torch's library exports
    none, or one that does not compute a test product as torch does."""
    address = _torch_cpu_symbol("sgemm_")
    return address if address is not None and _sgemm_agrees_with_torch(address) else None


BRGEMM_SYMBOL = "_ZN2at6native7cpublas6brgemmEllllllbPKfS3_Pfb"
"""``at::native::cpublas::brgemm(int64_t M, N, K, ld_a, ld_b, ld_c, bool add_C, const float* A, const float* B,
float* C, bool is_vnni)``: torch's entry to oneDNN's fp32 brgemm micro-kernel (torch 2.6 on). It is not a
public API, so it is found by its mangled name, checked against torch's product, and left unused where
either fails."""

BLOCK_LIBRARIES = {"blas": "torch's BLAS (sgemm)", "brgemm": "oneDNN's brgemm micro-kernel"}
"""The libraries the blocked kernels (:mod:`~overtrain.model.cpu_mlp`, :mod:`~overtrain.model.cpu_attention_block`,
:mod:`~overtrain.model.cpu_cross_entropy`) can make their products with, by key."""


class _Products(ctypes.Structure):
    """cpu_blas.h's ``Products``: the sgemm to call, and the brgemm where it is taken (else null)."""

    _fields_ = [("sgemm", ctypes.c_void_p), ("brgemm", ctypes.c_void_p)]


def run_block_products(products: ctypes.Structure, x: torch.Tensor, weight: torch.Tensor, grad_y: torch.Tensor,
                       block_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear layer's three training products block by block, as the kernels make them
    (``ot_block_products_check``): y = x W^T (N, O), grad_x = grad_y W (N, I) and grad_W = grad_y^T x (O, I),
    for x (N, I), W (O, I) and grad_y (N, O), contiguous fp32."""
    (rows, width), out_width = x.shape, weight.shape[0]
    y, grad_x = x.new_empty(rows, out_width), torch.empty_like(x)
    grad_weight = torch.empty_like(weight) if rows else torch.zeros_like(weight)
    status = kernel_library().ot_block_products_check(
        ctypes.addressof(products), x.data_ptr(), weight.data_ptr(), grad_y.data_ptr(), y.data_ptr(), grad_x.data_ptr(),
        grad_weight.data_ptr(), rows, width, out_width, block_rows,
    )
    raise_for_block_status(status, "the blocked products")
    return y, grad_x, grad_weight


def _block_products_agree_with_torch(products: ctypes.Structure) -> bool:
    """The three products of :func:`run_block_products`, on two non-square shapes whose rows leave a partial
    block (a weight wider and narrower than its input, so both of cpu_blas.h's weight-gradient paths), against
    torch's: a library that fails or disagrees is not taken."""
    for rows, width, out_width in ((70, 24, 40), (70, 40, 24)):
        x = torch.arange(rows * width, dtype=torch.float32).reshape(rows, width).sin()  # no draw from torch's RNG
        weight = torch.arange(out_width * width, dtype=torch.float32).reshape(out_width, width).cos()
        grad_y = torch.arange(rows * out_width, dtype=torch.float32).reshape(rows, out_width).sin()
        try:
            y, grad_x, grad_weight = run_block_products(products, x, weight, grad_y, block_rows=32)
        except (RuntimeError, MemoryError):
            return False
        if not (torch.allclose(y, x @ weight.T, atol=1e-4) and torch.allclose(grad_x, grad_y @ weight, atol=1e-4)
                and torch.allclose(grad_weight, grad_y.T @ x, atol=1e-3)):
            return False
    return True


@functools.lru_cache(maxsize=1)
def onednn_brgemm() -> int | None:
    """Address of :data:`BRGEMM_SYMBOL` in torch's library, for the blocked kernels; None where this torch has
    none, or its products through the kernels' helpers fail or disagree with torch's (a CPU without oneDNN's
    micro-kernel makes it throw, which the kernels catch)."""
    sgemm = blas_sgemm()
    if sgemm is None or kernel_library() is None:
        return None
    address = _torch_cpu_symbol(BRGEMM_SYMBOL)
    return address if address is not None and _block_products_agree_with_torch(_Products(sgemm, address)) else None


@functools.cache
def block_products(library: str) -> ctypes.Structure | None:
    """cpu_blas.h's ``Products`` for a key of :data:`BLOCK_LIBRARIES`, handed to the operators of ``cpu_ops.cpp``
    (which keep a copy) once per process; None where that library, or the kernels and operators that call it,
    are missing."""
    if not operators_available():
        return None
    sgemm = blas_sgemm()
    brgemm = onednn_brgemm() if library == "brgemm" else None
    if sgemm is None or (library == "brgemm" and brgemm is None):
        return None
    kernel_library().ot_set_block_products(int(library == "brgemm"), sgemm, brgemm)  # for the operators of cpu_ops.cpp
    return _Products(sgemm, brgemm)


BLOCKED_KERNELS = ("the MLP", "the MLP's backward pass", "the attention block", "the attention block's backward pass", "the fused loss")
"""The blocked kernels of ``cpu_ops.cpp``, in the order of its ``Kernel`` enum."""


def block_product_calls() -> dict[tuple[str, str], int]:
    """How many times each blocked kernel has made its products by each library in this process, by
    (kernel of :data:`BLOCKED_KERNELS`, key of :data:`BLOCK_LIBRARIES`): what the kernels computed with, as the
    kernels themselves count it (the tests read it; the model's attributes say only what was asked for)."""
    if not operators_available():
        return {}
    library = kernel_library()
    return {(kernel, name): library.ot_block_product_calls(index, int(name == "brgemm"))
            for index, kernel in enumerate(BLOCKED_KERNELS) for name in BLOCK_LIBRARIES}


def kernel_available() -> bool:
    """Whether the kernels are worth taking here, building (or finding) them now: torch runs one CPU thread
    (torch's operations use every thread, these kernels one) and they build on this machine."""
    return torch.get_num_threads() == 1 and kernel_library() is not None


def fp32_cpu_outside_autocast(*tensors: torch.Tensor) -> bool:
    """Whether kernels that make their products from fp32 inputs apply: every tensor fp32 on the CPU, and no
    CPU autocast (under which torch's products would be bf16). Only tensor properties and the autocast state,
    so torch.compile traces it without a break."""
    return not torch.is_autocast_enabled("cpu") and all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 for tensor in tensors)


def block_library_of(brgemm: bool) -> str:
    """The key of :data:`BLOCK_LIBRARIES` for a kernel's ``brgemm`` flag (the ops take a flag, not a name:
    inductor's C++ wrapper passes no string arguments to custom ops)."""
    return "brgemm" if brgemm else "blas"


def register_block_products(kernel: str, brgemm: bool) -> None:
    """Build (or load) the kernels and hand the operators of ``cpu_ops.cpp`` the products of the library for a
    kernel's ``brgemm`` flag (:func:`block_library_of`), once per process (:func:`block_products`); or a
    RuntimeError saying which is missing: the model asks for both before it takes such a kernel
    (LlamaLM.use_cpu_kernels)."""
    library = block_library_of(brgemm)
    if block_products(library) is None:
        raise RuntimeError(f"{kernel} needs overtrain's CPU kernels and {BLOCK_LIBRARIES[library]}; LlamaLM.use_cpu_kernels "
                           "takes torch's operations where they are missing")


def raise_for_block_status(status: int, kernel: str) -> None:
    """A blocked kernel's status as Python's error: 2, its buffers could not be allocated; 3, a product
    failed (the library threw, which the kernel caught at its C entry point)."""
    if status == 2:
        raise MemoryError(f"{kernel}: its per-call buffers could not be allocated")
    if status != 0:
        raise RuntimeError(f"{kernel}: a product failed in its library (status {status}); train.cpu_products=blas "
                           "takes torch's BLAS instead")
