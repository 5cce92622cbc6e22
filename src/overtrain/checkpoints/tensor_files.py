"""Read safetensors tensors straight into existing tensors with plain file reads (no mmap, no pickle).

``safetensors.safe_open`` memory-maps the file: every page a read touches stays mapped (and counted in
the process's resident memory) until the file is closed, so copying a whole model through it briefly
shows a second model's worth of memory. Here the header is parsed (8-byte little-endian length + JSON)
and each tensor's bytes are read with ``readinto`` directly into the destination's storage when dtype
and shape match, else into one temporary tensor that is converted on copy. At most one tensor is held
beside the model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from overtrain.errors import OvertrainError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 2**20


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """``({key: {dtype, shape, data_offsets}}, offset of the data section)`` of a safetensors file."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise OvertrainError(f"cannot read {path} as safetensors: {error}", f"the file is damaged; restore or re-download {Path(path).parent}") from None
    header.pop("__metadata__", None)
    return header, 8 + length


def stored_shape(path: Path, key: str) -> list[int]:
    return list(read_header(path)[0][key]["shape"])


@torch.no_grad()
def read_tensors_into(path: Path, destinations: Mapping[str, torch.Tensor]) -> None:
    """Overwrite each ``destinations[key]`` with tensor ``key`` of the file (bitwise when dtypes match)."""
    header, data_start = read_header(path)
    with open(path, "rb", buffering=0) as handle:
        for key, destination in destinations.items():
            entry = header.get(key)
            if entry is None:
                raise OvertrainError(f"{path} has no tensor {key}", "the weight files do not match the model")
            if list(entry["shape"]) != list(destination.shape):
                raise OvertrainError(f"{path}: {key} has shape {entry['shape']}, the model expects {list(destination.shape)}", "the config does not match the weights")
            dtype = DTYPES.get(entry["dtype"])
            if dtype is None:
                raise OvertrainError(f"{path}: {key} has dtype {entry['dtype']}, which overtrain does not read", "re-save the model in float32, float16 or bfloat16")
            begin, end = entry["data_offsets"]
            handle.seek(data_start + begin)
            if dtype == destination.dtype and destination.is_contiguous() and destination.device.type == "cpu":
                _read_exactly(handle, destination.detach().view(-1).view(torch.uint8).numpy(), end - begin, path)
            else:
                staging = torch.empty(tuple(entry["shape"]), dtype=dtype)
                _read_exactly(handle, staging.view(-1).view(torch.uint8).numpy(), end - begin, path)
                destination.copy_(staging)
                del staging


def _read_exactly(handle, buffer, size: int, path: Path) -> None:
    view = memoryview(buffer).cast("B")
    if len(view) != size:
        raise OvertrainError(f"{path}: a tensor's byte size does not match its shape", "the file is damaged; restore or re-download it")
    filled = 0
    while filled < size:
        count = handle.readinto(view[filled:])
        if not count:
            raise OvertrainError(f"{path} ends early (truncated)", "the file is damaged; restore or re-download it")
        filled += count


def read_parameters(named: Mapping[str, torch.Tensor], keys: Mapping[str, str], index: Mapping[str, Path], names: Iterable[str] | None = None) -> None:
    """Fill parameters ``names`` (default: all of ``keys``) from their files, file by file, tensor by tensor."""
    by_file: dict[Path, dict[str, torch.Tensor]] = {}
    for name in names if names is not None else keys:
        by_file.setdefault(Path(index[keys[name]]), {})[keys[name]] = named[name]
    for file, destinations in by_file.items():
        read_tensors_into(file, destinations)
