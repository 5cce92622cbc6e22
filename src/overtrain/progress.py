"""Progress in tokens: a tqdm bar with tokens/s and ETA on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time

from overtrain.units import format_seconds


class TokenProgress:
    """A bar over ``total_tokens`` that starts at ``initial_tokens`` (resumed runs start part-way)."""

    def __init__(self, total_tokens: int, initial_tokens: int = 0, enabled: bool = True, label: str = "") -> None:
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.total, self.done, self.label = total_tokens, initial_tokens, label
        self.started, self.start_done = time.perf_counter(), initial_tokens
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total_tokens, initial=initial_tokens, unit="tok", unit_scale=True, desc=label, dynamic_ncols=True)

    def update(self, tokens: int, **postfix: float) -> None:
        self.done += tokens
        if self.bar is not None:
            self.bar.update(tokens)
            self.bar.set_postfix({key: f"{value:.3g}" for key, value in postfix.items()}, refresh=False)

    def eta_seconds(self) -> float:
        rate = (self.done - self.start_done) / max(time.perf_counter() - self.started, 1e-9)
        return (self.total - self.done) / max(rate, 1e-9)

    def note(self, message: str) -> None:
        """A log line (kept above the bar on a terminal); non-interactive runs also get the ETA in it."""
        if not self.enabled:
            return
        line = f"[{self.label}] {message}" if self.label else message
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(f"{line} | eta {format_seconds(self.eta_seconds())}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
