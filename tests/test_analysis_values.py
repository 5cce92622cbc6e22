"""The values of :func:`recommend_checkpoints` and :func:`noise_predicts_forgetting` on frames of known structure."""

from __future__ import annotations

import pandas as pd
import pytest

from overtrain.results.analysis import noise_predicts_forgetting, recommend_checkpoints

TOKENS = [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000]


def finetune_rows(task: str, lr: float, reg_lambda: float, id_by_seed: list[list[float]], ood_by_seed: list[list[float]],
                  tokens: list[int] = TOKENS) -> list[dict]:
    rows = []
    for seed, (id_losses, ood_losses) in enumerate(zip(id_by_seed, ood_by_seed)):
        for budget, id_loss, ood_loss in zip(tokens, id_losses, ood_losses):
            rows.append({"task": task, "lr": lr, "reg_lambda": reg_lambda, "seed": seed, "tokens_seen": budget,
                         "id_loss_after": id_loss, "ood_loss_before": 2.0, "ood_loss_after": ood_loss, "forgetting": ood_loss - 2.0})
    return rows


def test_recommend_checkpoints_takes_the_best_budget_of_the_seed_mean_per_setting() -> None:
    # seed 0 alone would pick 1M for the task; the mean over both seeds has its minimum at 2M (1.25)
    u_task = [[3.0, 2.0, 1.0, 1.5, 2.5], [3.0, 2.0, 2.0, 1.0, 2.5]]  # means 3, 2, 1.5, 1.25, 2.5
    u_keep = [[4.0, 3.0, 3.5, 3.8, 4.0], [4.2, 3.4, 3.5, 3.8, 4.0]]  # means 4.1, 3.2, 3.5, 3.8, 4.0 -> 500k
    falling = [[5.0, 4.0, 3.0, 2.0, 1.0]]  # more tokens always better for the task
    rising = [[1.0, 2.0, 3.0, 4.0, 5.0]]   # and always worse for retention
    frame = pd.DataFrame(finetune_rows("a", 1e-3, 0.0, u_task, u_keep) + finetune_rows("a", 1e-2, 0.0, falling, rising)
                         + finetune_rows("a", 1e-3, 0.5, rising, falling) + finetune_rows("b", 1e-3, 0.0, falling, falling, TOKENS[:3]))
    table = recommend_checkpoints(frame).set_index(["task", "lr", "reg_lambda"])
    assert len(table) == 4
    u = table.loc[("a", 1e-3, 0.0)]
    assert (u["best_for_task_tokens"], u["task_loss_there"]) == (2_000_000, pytest.approx(1.25))
    assert (u["best_for_retention_tokens"], u["pretraining_loss_there"]) == (500_000, pytest.approx(3.2))
    assert u["largest_budget"] == 4_000_000
    monotone = table.loc[("a", 1e-2, 0.0)]
    assert (monotone["best_for_task_tokens"], monotone["best_for_retention_tokens"]) == (4_000_000, 250_000)
    regularized = table.loc[("a", 1e-3, 0.5)]  # reg_lambda is its own setting, not mixed into lambda 0
    assert (regularized["best_for_task_tokens"], regularized["best_for_retention_tokens"]) == (250_000, 4_000_000)
    short = table.loc[("b", 1e-3, 0.0)]
    assert (short["best_for_task_tokens"], short["largest_budget"], short["pretraining_loss_there"]) == (1_000_000, 1_000_000, 3.0)


def noise_rows(gamma: float, deltas_by_seed: list[list[float]], tokens: list[int] = TOKENS) -> list[dict]:
    return [{"tokens_seen": budget, "gamma": gamma, "seed": seed, "delta": delta, "base_loss": 3.0, "perturbed_loss": 3.0 + delta}
            for seed, deltas in enumerate(deltas_by_seed) for budget, delta in zip(tokens, deltas)]


def forgetting_rows(task: str, lr: float, reg_lambda: float, forgetting: list[float], tokens: list[int]) -> list[dict]:
    return [{"task": task, "lr": lr, "reg_lambda": reg_lambda, "seed": 0, "tokens_seen": budget, "forgetting": value}
            for budget, value in zip(tokens, forgetting)]


def test_noise_predicts_forgetting_is_the_rank_correlation_over_shared_budgets() -> None:
    # gamma 1: the seed mean rises with tokens (seed 1 alone falls at the end); gamma 2: it falls
    noise = pd.DataFrame(noise_rows(1.0, [[0.1, 0.2, 0.3, 0.4, 0.9], [0.1, 0.2, 0.3, 0.4, 0.3]])
                         + noise_rows(2.0, [[5.0, 4.0, 3.0, 2.0, 1.0]]))
    shared = TOKENS[1:]  # fine-tuning did not run at 250k: 4 shared budgets
    finetune = pd.DataFrame(
        forgetting_rows("t", 1e-3, 0.0, [1.0, 3.0, 2.0, 4.0], shared)         # ranks 1 3 2 4 against 1 2 3 4: rho = 0.8
        + forgetting_rows("t", 1e-3, 0.1, [9.0, -9.0, 9.0, -9.0], shared)     # regularized runs are left out
        + forgetting_rows("t", 1e-2, 0.0, [4.0, 3.0, 2.0, 1.0], shared)       # falls: rho = -1 with gamma 1
        + forgetting_rows("u", 1e-3, 0.0, [1.0, 2.0], TOKENS[:2])             # only 2 budgets: no row
    )
    table = noise_predicts_forgetting(noise, finetune).set_index(["gamma", "task", "lr"])
    assert set(table.index) == {(1.0, "t", 1e-3), (1.0, "t", 1e-2), (2.0, "t", 1e-3), (2.0, "t", 1e-2)}
    assert (table["budgets"] == 4).all()
    assert table.loc[(1.0, "t", 1e-3), "spearman"] == pytest.approx(0.8)
    assert table.loc[(1.0, "t", 1e-2), "spearman"] == pytest.approx(-1.0)
    assert table.loc[(2.0, "t", 1e-3), "spearman"] == pytest.approx(-0.8)
    assert table.loc[(2.0, "t", 1e-2), "spearman"] == pytest.approx(1.0)


def test_noise_predicts_forgetting_within_each_factor_family() -> None:
    # Two weight decays: within each, delta and forgetting rise together (rho +1). Pooled per budget they
    # would be averages of two different models; the families are kept apart, and named.
    noise, finetune = [], []
    for wd, offset in ((0.1, 0.0), (3.0, 10.0)):
        for k, budget in enumerate(TOKENS[:4]):
            noise.append({"gamma": 1.0, "seed": 0, "tokens_seen": budget, "delta": offset - k if wd == 3.0 else k,
                          "pretrain.train.weight_decay": wd})
            finetune.append({"task": "t", "lr": 1e-3, "reg_lambda": 0.0, "seed": 0, "tokens_seen": budget,
                             "forgetting": -k if wd == 3.0 else k, "pretrain.train.weight_decay": wd})
    table = noise_predicts_forgetting(pd.DataFrame(noise), pd.DataFrame(finetune))
    assert len(table) == 2 and table["family"].nunique() == 2
    assert list(table["spearman"]) == pytest.approx([1.0, 1.0])  # pooled per budget, wd 3 would cancel wd 0.1 out
