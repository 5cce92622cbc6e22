"""Peak memory (RSS) of the noise probe on a real model, against a full state-dict copy as the baseline.

    python benchmarks/bench_probe_memory.py MODEL_FOLDER EVAL_TEXT [eval_tokens=4096] [eval_seq_len=512] [threads=1]

MODEL_FOLDER is any Hugging Face causal-LM folder (e.g. SmolLM2-135M converted as docs/any_model.md shows).
A thread samples the process's resident memory every 2 ms; each phase reports its peak above the
resident memory after loading. The probe's own overhead (perturb + restore, no evaluation) is compared
with the largest single tensor (what "one extra tensor at a time" allows) and with the model's size
(what a state-dict copy would add).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

import psutil
import torch

MIB = 2**20


class PeakRss:
    """Samples RSS in a background thread; ``peak`` is the highest value since ``reset``."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.process, self.interval_s, self.peak, self._stop = psutil.Process(), interval_s, 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def reset(self) -> int:
        self.peak = self.process.memory_info().rss
        return self.peak

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


@contextmanager
def phase(name: str, sampler: PeakRss, base: int, rows: list):
    sampler.reset()
    started = time.perf_counter()
    yield
    time.sleep(0.01)
    rows.append((name, time.perf_counter() - started, (sampler.peak - base) / MIB))


def main(folder: str, eval_text: str, eval_tokens: int = 4096, eval_seq_len: int = 512) -> None:
    from overtrain.probes.noise import NoiseDraw, perturbed, run_noise_probe
    from overtrain.probes.target import load_probe_target

    sampler, rows = PeakRss(), []
    start_rss = sampler.reset()
    started = time.perf_counter()
    target = load_probe_target(folder, eval_tokens, eval_text, eval_seq_len=eval_seq_len, log=lambda *_: None)
    load_seconds = time.perf_counter() - started
    load_peak = sampler.peak
    loaded = sampler.reset()
    params = {id(p): p for p in target.model.parameters()}.values()
    model_mib = sum(p.numel() * p.element_size() for p in params) / MIB
    largest_mib = max(p.numel() * p.element_size() for p in params) / MIB
    with phase("perturb + restore, 2 draws (no evaluation)", sampler, loaded, rows):
        for seed in (0, 1):
            with perturbed(target.model, NoiseDraw(0.03, seed, "relative"), None, target.weight_files, target.parameter_keys):
                pass
    with phase("one loss evaluation", sampler, loaded, rows):
        base = target.pretraining_loss().loss
    with phase("run_noise_probe gammas=[0.01,0.03] seeds=2 relative", sampler, loaded, rows):
        records = run_noise_probe(target, [0.01, 0.03], [0, 1], mode="relative")
    sampler.stop()
    print(f"model: {folder} ({target.identity['architecture']}, {target.identity['implementation']}), "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M parameters = {model_mib:.0f} MiB fp32; largest tensor {largest_mib:.0f} MiB")
    print(f"eval: {target.eval_inputs.shape[0]} windows x {target.eval_inputs.shape[1]} tokens, batch {target.eval_batch_size}; "
          f"torch threads {torch.get_num_threads()}; base loss {base:.4f}")
    print(f"RSS before loading {start_rss / MIB:.0f} MiB; peak while loading {load_peak / MIB:.0f} MiB; "
          f"after loading {loaded / MIB:.0f} MiB; loading took {load_seconds:.1f} s")
    print(f"{'phase':<55} {'seconds':>8} {'peak above loaded (MiB)':>24}")
    for name, seconds, peak_mib in rows:
        print(f"{name:<55} {seconds:>8.1f} {peak_mib:>24.0f}")
    overhead = rows[0][2]
    print(f"probe overhead / largest tensor = {overhead / largest_mib:.2f}x; a state-dict copy would add {model_mib:.0f} MiB "
          f"({model_mib / max(overhead, 1):.1f}x the measured overhead)")
    for record in records:
        print(f"  gamma {record.gamma:g} seed {record.seed}: {record.base_loss:.4f} -> {record.perturbed_loss:.4f} ({record.delta:+.4f})")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    settings = dict(arg.split("=", 1) for arg in sys.argv[3:])
    torch.set_num_threads(int(settings.get("threads", 1)))  # on a shared 2-core machine, 2 threads spin against each other
    main(sys.argv[1], sys.argv[2], int(settings.get("eval_tokens", 4096)), int(settings.get("eval_seq_len", 512)))
