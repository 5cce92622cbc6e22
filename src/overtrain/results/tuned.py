"""The tuned learning rate: per checkpoint, the fine-tuning LR with the best held-out ID result.

The paper's "tuned" curves fine-tune every checkpoint at several LRs and keep, per checkpoint, the run with
the best in-distribution (ID) result. :func:`tuned_frame` does that on a fine-tuning frame
(:func:`overtrain.results.analysis.finetune_frame`): per (checkpoint, task, fine-tuning seed, remedy setting)
it keeps the row whose LR gives the lowest held-out ID loss (or highest accuracy), using
:func:`overtrain.probes.finetune.select_tuned`. The remedy settings are ``reg_lambda``, ``replay_fraction`` and
``linear_probe_steps`` (rows of older stores without the last two count as plain), so "tuned" is read per
remedy: tuned plain fine-tuning, tuned L2, and so on.

The choice is made on the same held-out ID examples that the ID loss is reported on (as in the paper): a
tuned curve is an upper bound on what LR tuning on a separate validation split would reach.

Stable interface (imported by other report sections): ``tuned_frame(finetune, metric="id_loss_after")`` and
the columns it adds, ``lrs_compared`` and ``lr_grid``.
"""

from __future__ import annotations

import pandas as pd

from overtrain.errors import OvertrainError
from overtrain.probes.finetune import TUNED_KEYS, select_tuned

REMEDY_DEFAULTS = {"reg_lambda": 0.0, "replay_fraction": 0.0, "linear_probe_steps": 0}
"""The remedy settings of a fine-tuning row and their values when off (rows of older stores lack some)."""
TUNED_METRICS = ("id_loss_after", "id_accuracy_after")


def with_remedy_columns(finetune: pd.DataFrame) -> pd.DataFrame:
    """``finetune`` with every remedy column present (missing ones filled with their off value)."""
    frame = finetune.copy()
    for column, default in REMEDY_DEFAULTS.items():
        if column not in frame:
            frame[column] = default
        else:
            frame[column] = frame[column].fillna(default)
    return frame


def tuned_frame(finetune: pd.DataFrame, metric: str = "id_loss_after") -> pd.DataFrame:
    """The tuned-LR rows of a fine-tuning frame: one per (checkpoint, task, seed, reg_lambda, replay_fraction,
    linear_probe_steps), the row whose ``lr`` has the best ``metric`` among the LRs run with those settings.

    ``metric``: ``id_loss_after`` (held-out ID loss, nats per completion token; lowest wins, the default) or
    ``id_accuracy_after`` (tasks with choices; highest wins, rows without accuracy are skipped).
    Returns the chosen rows with all of ``finetune``'s columns (remedy columns filled in), plus
    ``lrs_compared`` (how many LRs the choice was among; 1 means nothing was tuned) and ``lr_grid`` (those LRs,
    e.g. ``"0.005/0.01/0.02"``), sorted by task, remedy settings, tokens_seen, seed. An empty frame gives an
    empty frame with those columns.
    """
    if metric not in TUNED_METRICS:
        raise OvertrainError(f"tuned_frame: metric={metric!r} is not an ID read-out", f"use one of {', '.join(TUNED_METRICS)}")
    frame = with_remedy_columns(finetune)
    if frame.empty:
        return frame.assign(lrs_compared=pd.Series(dtype="int64"), lr_grid=pd.Series(dtype="object"))
    if metric not in frame:
        raise OvertrainError(f"tuned_frame: the fine-tuning frame has no {metric!r} column", "pass a frame from analysis.finetune_frame")
    keys = list(TUNED_KEYS)
    frame = frame.reset_index(drop=True)
    frame["_row"] = frame.index
    chosen = [record["_row"] for record in select_tuned(frame[[*keys, metric, "_row"]].to_dict("records"), metric)]
    grids = frame.groupby(keys, dropna=False)["lr"].agg(lambda lrs: sorted(set(lrs))).rename("_lrs").reset_index()
    tuned = frame.loc[sorted(chosen)].merge(grids, on=keys, how="left")
    tuned["lrs_compared"] = tuned["_lrs"].map(len).astype("int64")
    tuned["lr_grid"] = tuned["_lrs"].map(lambda lrs: "/".join(f"{lr:g}" for lr in lrs))
    order = [c for c in ["task", "reg_lambda", "replay_fraction", "linear_probe_steps", "tokens_seen", "seed"] if c in tuned]
    return tuned.drop(columns=["_row", "_lrs"]).sort_values(order).reset_index(drop=True)
