"""Data-parallel helpers under real process groups (gloo, two spawned CPU processes)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from overtrain.pretrain.distributed import distributed_context, main_process_value

    context = distributed_context()
    # each rank's own decision differs (as two timings on shared cores may); rank 0's is taken by all
    agreed = [main_process_value(rank + 1, context), main_process_value(7 - rank, context)]
    (out / f"rank{rank}.txt").write_text(" ".join(map(str, agreed)))
    torch.distributed.destroy_process_group()


def test_every_rank_takes_rank_zeros_value(tmp_path: Path) -> None:
    from overtrain.pretrain.distributed import DistributedContext, main_process_value

    assert main_process_value(3, DistributedContext()) == 3
    mp.spawn(_rank_main, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)] == ["1 7", "1 7"]
