"""Tokenization throughput with a pre-trained tokenizer: tokens per second per core, the scaling from one to
two worker processes, and an estimate (labelled as one) for C4 at 128B tokens on N cores.

    python benchmarks/bench_tokenize.py [--tokenizer allenai/OLMo-1B-hf] [--corpus embedded] [--megabytes 16]
                                        [--rounds 3] [--cores 16 64 256] [--work-dir runs/bench_tokenize]

``--tokenizer`` is anything ``data.tokenizer`` takes (a Hub name needs the network or the HF cache; offline,
pass a folder holding tokenizer.json). The corpus's first ``--megabytes`` of documents are written once to a
plain JSONL file (as C4's files are JSON lines), which every measurement then reads.

Measured, in interleaved rounds so that machine load hits every side alike:

- ``encode``: ``ChunkEncoder.encode`` (what a worker runs) over chunks already in memory, one process, one
  thread (``TOKENIZERS_PARALLELISM=false``): the per-core rate of the tokenizer itself;
- ``read``: the single reader alone (documents from the JSONL file, no encoding): the ceiling of one reader;
- ``1 worker`` / ``2 workers``: the whole pipeline, ``tokenize_into_shards`` into a fresh shard folder
  (reading, encoding, the ordered writer, shard files), with ``tokenize.workers`` 1 (in process) and 2
  (worker processes). The two folders are checked byte-identical.

Times are wall time and CPU time (this process and its reaped workers, from ``getrusage``); the load
average is printed before and after, since the machine may be shared. The chunk size is chosen so that a
chunk holds ~512 KB of text, about what 256 C4 documents hold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism

from overtrain.data.config import DataConfig, TokenizeConfig
from overtrain.data.corpus import iter_documents
from overtrain.data.tokenize_parallel import ChunkEncoder, chunked, tokenize_into_shards
from overtrain.data.tokenizer import load_pretrained_tokenizer

CHUNK_TEXT_BYTES = 512_000
C4_TOKENS = 128e9


def cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) of this process, and of every child it has reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def write_sample(corpus: str, megabytes: float, path: Path) -> tuple[int, int]:
    """The corpus's first ``megabytes`` MB of documents as JSONL; returns (documents, text bytes)."""
    documents = total = 0
    with open(path, "w", encoding="utf-8") as handle:
        for document in iter_documents(corpus):
            handle.write(json.dumps({"text": document}) + "\n")
            documents += 1
            total += len(document.encode("utf-8"))
            if total >= megabytes * 1e6:
                break
    return documents, total


def timed(function) -> tuple[object, float, float, float]:
    """(result, wall s, CPU s of this process, CPU s of the worker processes it reaped)."""
    wall, (own, children) = time.perf_counter(), cpu_seconds()
    result = function()
    own_after, children_after = cpu_seconds()
    return result, time.perf_counter() - wall, own_after - own, children_after - children


def pipeline(config: DataConfig, folder: Path, pretrained) -> int:
    shutil.rmtree(folder, ignore_errors=True)
    index = tokenize_into_shards(config, folder, pretrained, train_tokens=10**15, log=lambda *_: None)
    return index.train.total + index.heldout.total


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="allenai/OLMo-1B-hf")
    parser.add_argument("--corpus", default="embedded")
    parser.add_argument("--megabytes", type=float, default=16.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--work-dir", default="runs/bench_tokenize")
    args = parser.parse_args()

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sample = work / "sample.jsonl"
    documents, text_bytes = write_sample(args.corpus, args.megabytes, sample)
    pretrained = load_pretrained_tokenizer(args.tokenizer)
    chunk_documents = max(1, round(CHUNK_TEXT_BYTES / (text_bytes / documents)))
    print(f"tokenizer {args.tokenizer} ({pretrained.size:,} ids); corpus: first {documents:,} documents of {args.corpus!r}, "
          f"{text_bytes / 1e6:.1f} MB of text, {chunk_documents} documents per chunk; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}")

    def config(workers: int) -> DataConfig:
        return DataConfig(corpus=str(sample), tokenizer=args.tokenizer, heldout_fraction=0.02, heldout_tokens=10**15,
                          cache_dir=str(work), tokenize=TokenizeConfig(workers=workers, shard_tokens=2**20, chunk_documents=chunk_documents))

    texts = list(chunked(iter_documents(str(sample)), chunk_documents))
    encoder = ChunkEncoder(pretrained.tokenizer.to_str(), pretrained.end_of_text_id, 0.02)
    rows: dict[str, list[tuple[float, float, float, int]]] = {"encode": [], "read": [], "1 worker": [], "2 workers": []}
    loads = []
    for round_number in range(args.rounds):
        loads.append(os.getloadavg()[0])
        tokens, wall, own, children = timed(lambda: sum(int(encoder.encode(chunk).ids.size) for chunk in texts))
        rows["encode"].append((wall, own, children, tokens))
        _, wall, own, children = timed(lambda: sum(1 for _ in iter_documents(str(sample))))
        rows["read"].append((wall, own, children, rows["encode"][-1][3]))
        for workers, name in ((1, "1 worker"), (2, "2 workers")):
            tokens, wall, own, children = timed(lambda workers=workers: pipeline(config(workers), work / f"shards-{workers}", pretrained))
            rows[name].append((wall, own, children, tokens))
        identical = folder_bytes(work / "shards-1") == folder_bytes(work / "shards-2")
        print(f"round {round_number + 1}: " + ", ".join(f"{name} {rows[name][-1][0]:.2f} s" for name in rows)
              + f"; 1- and 2-worker shards identical: {identical}")
        if not identical:
            print("ERROR: the shards differ between worker counts", file=sys.stderr)
            return 1
    loads.append(os.getloadavg()[0])

    print(f"\nmedians of {args.rounds} rounds (load average {min(loads):.1f}-{max(loads):.1f} over the run):")
    print(f"{'':<10} {'wall s':>8} {'CPU s, driver':>14} {'CPU s, workers':>15} {'tokens/s (wall)':>16} {'tokens per CPU-second':>22}")
    medians = {}
    for name, measured in rows.items():
        wall, own, children = (statistics.median(m[index] for m in measured) for index in range(3))
        tokens = measured[0][3]
        medians[name] = (wall, own, children, tokens)
        print(f"{name:<10} {wall:>8.2f} {own:>14.2f} {children:>15.2f} {tokens / wall:>16,.0f} {tokens / (own + children):>22,.0f}")
    wall, own, children, tokens = medians["encode"]
    per_core = tokens / own
    _, driver_2, workers_2, tokens_2 = medians["2 workers"]
    worker_rate, driver_rate = tokens_2 / workers_2, tokens_2 / driver_2
    scaling = medians["1 worker"][0] / medians["2 workers"][0]
    print(f"\nper core, the tokenizer alone (encode, by CPU time): {per_core:,.0f} tokens/s; {text_bytes / tokens:.2f} bytes per token")
    print(f"2-worker pipeline: {worker_rate:,.0f} tokens per CPU-second of a worker (start-up included), the driver "
          f"(reading, sending, ordering, writing) {driver_rate:,.0f} tokens per CPU-second")
    print(f"scaling 1 -> 2 worker processes, whole pipeline, wall: {scaling:.2f}x (load average {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} cores: wall time here measures the share of the machine this job got, not the code)")
    print(f"one reader alone (this JSONL file): {medians['read'][3] / medians['read'][0]:,.0f} tokens/s")
    print(f"\nESTIMATE (not measured): C4 at {C4_TOKENS / 1e9:.0f}B tokens on N free cores, assuming the per-CPU-second rates "
          "above hold for C4 and this tokenizer, and one driver process (serial: at most its own rate):")
    for cores in args.cores:
        rate = min((cores - 1) * worker_rate, driver_rate)
        limit = "driver-bound" if driver_rate < (cores - 1) * worker_rate else "worker-bound"
        print(f"  N={cores:>4} cores ({cores - 1} workers): {rate:>12,.0f} tokens/s -> {C4_TOKENS / rate / 3600:7.1f} h ({limit})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
