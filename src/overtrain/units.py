"""Units every log line and figure uses: tokens as 1.23M, seconds as 4m05s."""

from __future__ import annotations


def format_tokens(count: float) -> str:
    """1234567 -> '1.23M'; the unit every log line in overtrain uses."""
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= threshold:
            return f"{count / threshold:.3g}{suffix}"
    return f"{count:.0f}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
