"""The fine-tuning-U study: the synthetic long tail, the one-lever-at-a-time axes, per-doubling slopes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overtrain.config import config_to_dict
from overtrain.data.config import DataConfig
from overtrain.data.synthetic import LongTailConfig, fact_table, mix_long_tail, synthetic_documents, zipf_probabilities
from overtrain.data.tokenizer import load_tokenizer
from overtrain.data.tokens import data_cache_key, prepare_token_data
from overtrain.errors import OvertrainError
from overtrain.pretrain.config import PretrainConfig, validate_pretrain_config
from overtrain.results.study import (
    crossing_estimate,
    crossing_estimates,
    doubling_slopes,
    sharpness_tables,
    study_settings,
    unit_interval,
)
from overtrain.sweep.config import load_sweep_config, pretrain_variants, sweep_config_from_tree
from overtrain.sweep.plan import plan_jobs

REPO = Path(__file__).resolve().parents[1]


def _corpus(documents: int = 300) -> list[str]:
    rng = np.random.default_rng(7)
    words = ["river", "stone", "light", "over", "the", "and", "old", "house", "went", "quiet"]
    return [" ".join(rng.choice(words, size=int(rng.integers(50, 400)))) for _ in range(documents)]


def test_long_tail_is_deterministic_and_mixes_at_the_stated_ratio() -> None:
    corpus = _corpus()
    config = LongTailConfig(fraction=0.25, facts=500, zipf_exponent=1.0, seed=3, document_bytes=400)
    mixed = list(mix_long_tail(iter(corpus), config))
    assert mixed == list(mix_long_tail(iter(corpus), config))  # same settings, same text
    assert mixed != list(mix_long_tail(iter(corpus), dataclasses.replace(config, seed=4)))
    corpus_set = set(corpus)
    assert [doc for doc in mixed if doc in corpus_set] == corpus  # the corpus is kept, in order
    synthetic = [doc for doc in mixed if doc not in corpus_set]
    synthetic_bytes = sum(len(doc.encode()) for doc in synthetic)
    total = sum(len(doc.encode()) for doc in mixed)
    largest = max(len(doc.encode()) for doc in synthetic)
    assert abs(synthetic_bytes - 0.25 * total) <= largest  # the stated share, to within one synthetic document
    assert list(mix_long_tail(iter(corpus), dataclasses.replace(config, fraction=0.0))) == corpus


def test_long_tail_facts_follow_the_zipf_law() -> None:
    config = LongTailConfig(fraction=0.5, facts=200, zipf_exponent=1.0, seed=0, document_bytes=2000)
    table = fact_table(config)
    assert len(set(table)) == 200 and len({fact.split(" is ")[0] for fact in table}) == 200
    stream = synthetic_documents(config)
    text = " ".join(next(stream) for _ in range(300))
    counts = np.array([text.count(fact) for fact in table[:4]], dtype=float)
    expected = zipf_probabilities(200, 1.0)[:4] / zipf_probabilities(200, 1.0)[0]
    np.testing.assert_allclose(counts / counts[0], expected, rtol=0.15)  # rank 1, 2, 3, 4 seen as 1 : 1/2 : 1/3 : 1/4


def test_long_tail_off_leaves_configs_and_keys_as_they_were(tmp_path: Path) -> None:
    assert "long_tail" not in config_to_dict(DataConfig())
    on = DataConfig(long_tail=LongTailConfig(fraction=0.25))
    assert config_to_dict(on)["long_tail"]["fraction"] == 0.25
    assert data_cache_key(DataConfig(long_tail=LongTailConfig(fraction=0.0, facts=7))) == data_cache_key(DataConfig())
    assert data_cache_key(on) != data_cache_key(DataConfig())
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{doc}"}}\n' for doc in _corpus(60)))
    data = prepare_token_data(DataConfig(corpus=str(corpus), vocab_size=259, cache_dir=str(tmp_path / "cache"),
                                         long_tail=LongTailConfig(fraction=0.3, facts=50, document_bytes=300)), log=lambda _: None)
    assert data.meta["long_tail"]["fraction"] == 0.3
    text = load_tokenizer(data.tokenizer_folder).decode([int(i) for i in data.train])
    assert "The capital of" in text and "quiet" in text  # facts and corpus, tokenized together


def test_bad_long_tail_setting_is_one_clear_error() -> None:
    config = PretrainConfig()
    config.data.long_tail = LongTailConfig(fraction=1.5)
    with pytest.raises(OvertrainError, match=r"data\.long_tail\.fraction"):
        validate_pretrain_config(config)


def test_per_doubling_slopes_on_a_frame_with_a_known_answer() -> None:
    tokens = np.array([250e3, 500e3, 1e6, 2e6, 4e6])
    doublings = np.log2(tokens / tokens[0])
    rows = []
    for seed, growth in enumerate([0.09, 0.10, 0.11]):  # forgetting grows 0.10 nats per doubling on average
        for t, d in zip(tokens, doublings):
            before = 3.0 - 0.2 * d + 0.01 * seed  # the base gains 0.2 nats per doubling in every seed
            forgetting = 0.3 + growth * d
            rows.append({"tokens_seen": int(t), "pretrain_seed": seed, "seed": 0, "task": "t", "lr": 1e-2, "steps": 60,
                         "reg_lambda": 0.0, "pretrain.train.weight_decay": 3.0, "ood_loss_before": before,
                         "forgetting": forgetting, "ood_loss_after": before + forgetting})
    frame = pd.DataFrame(rows)
    np.testing.assert_allclose(doubling_slopes(tokens, frame.pivot_table(index="pretrain_seed", columns="tokens_seen", values="forgetting").to_numpy()),
                               np.repeat([[0.09], [0.10], [0.11]], 4, axis=1))
    [result] = study_settings(frame)
    assert result.resampled == "pre-training seeds" and result.base_gain[0].units == 3
    assert all(abs(g.mean - 0.2) < 1e-9 for g in result.base_gain)
    half_width = 4.302653 * 0.01 / np.sqrt(3)  # t 0.975 with 2 d.f. x the growths' s.d. (0.01) / sqrt(3 seeds)
    for g in result.forgetting_growth:
        assert g.kind == "t 95%" and g.mean == pytest.approx(0.1, abs=1e-9)
        assert (g.low, g.high) == pytest.approx((0.1 - half_width, 0.1 + half_width), abs=1e-6)
    assert not result.inflection.u_shaped  # growth 0.1 < gain 0.2 at every doubling: the loss after keeps falling
    assert len(result.crossings) == 2 and all(c.tokens is None for c in result.crossings)  # constant rates never cross
    assert unit_interval(np.array([1.0, 3.0]), "seeds").kind == "range"


def test_crossing_estimate_extrapolates_a_decaying_gain() -> None:
    tokens = np.array([1e6, 2e6, 4e6, 8e6])
    gain = np.array([0.4, 0.2, 0.1])  # halves every doubling: 0.05, 0.025, ... next
    growth = np.array([0.03, 0.03, 0.03])
    assert crossing_estimate(tokens, gain, growth).tokens == pytest.approx(8e6 * 2**2)  # 0.025 < 0.03 two doublings on


def test_crossing_estimates_give_both_models_of_a_slowing_growth() -> None:
    # The gain halves each doubling; the growth shrinks by a quarter. As a geometric decay the growth
    # overtakes the gain when 0.045 x 0.75^k > 0.1 x 0.5^k, i.e. 1.5^k > 2.22: k = 2. The line through the
    # same three points reaches zero before then and never crosses.
    tokens = np.array([1e6, 2e6, 4e6, 8e6])
    gain, growth = np.array([0.4, 0.2, 0.1]), np.array([0.08, 0.06, 0.045])
    geometric, linear = crossing_estimates(tokens, gain, growth)
    assert geometric.tokens == pytest.approx(8e6 * 2**2) and "geometric decay over" in geometric.method
    assert linear.tokens is None and "as a line" in linear.method and "no crossing" in linear.describe()
    with pytest.raises(ValueError, match="growth_model"):
        crossing_estimate(tokens, gain, growth, growth_model="cubic")


def test_study_spec_plans_one_lever_at_a_time() -> None:
    config = load_sweep_config(REPO / "configs" / "study" / "finetune_u.yaml")
    variants = pretrain_variants(config)
    keys = {tuple(variant.factors) for variant in variants}
    assert len(keys) == 1  # every ladder carries every factor
    factors = [variant.factors for variant in variants]
    seeds = {wd: sorted(f["train.seed"] for f in factors if f["train.weight_decay"] == wd and f["ladder.mode"] == "wsd-branches"
                        and f["data.long_tail.fraction"] == 0.0 and f["model.d_model"] == 64) for wd in (0.1, 3.0)}
    assert seeds == {0.1: [0, 1, 2], 3.0: [0, 1, 2]}
    assert {(f["ladder.mode"], f["train.schedule"]) for f in factors} == {("wsd-branches", "wsd"), ("cosine-per-budget", "cosine"),
                                                                          ("cosine-per-budget", "constant")}
    tail = [v.config for v in variants if v.factors["data.long_tail.fraction"] == 0.25]
    assert len(tail) == 1 and tail[0].data.long_tail.fraction == 0.25 and tail[0].train.weight_decay == 0.1
    assert len({v.config.out_dir for v in variants}) == len(variants)
    jobs = plan_jobs(config)
    assert sum(job.kind == "finetune" for job in jobs) == sum(job.kind == "sharpness" for job in jobs) == 5 * len(variants)


def test_a_combination_named_by_two_entries_is_one_ladder() -> None:
    tree = {"out_dir": "runs/x", "pretrain": {"model": {"preset": "nano"}, "data": {"vocab_size": 259},
                                              "train": {"weight_decay": 3.0}, "ladder": {"budgets_tokens": [200_000, 400_000]}},
            "pretrain_axes": [{"train": {"weight_decay": [0.1, 3.0]}}, {"train": {"seed": [0, 1]}}]}
    factors = [v.factors for v in pretrain_variants(sweep_config_from_tree(tree))]
    assert factors == [{"train.weight_decay": 0.1, "train.seed": 0}, {"train.weight_decay": 3.0, "train.seed": 0},
                       {"train.weight_decay": 3.0, "train.seed": 1}]
    tree["pretrain_axes"] = [{"train": {"weight_decay": [0.1]}}, {"train": {"wieght_decay": [1.0]}}]
    with pytest.raises(OvertrainError, match="wieght_decay"):
        pretrain_variants(sweep_config_from_tree(tree))
    tree["pretrain_axes"] = {"train": {"weight_decay": [1, 1.0]}}  # one setting written twice: two identical ladders
    with pytest.raises(OvertrainError, match=r"weight_decay = \[1, 1.0\] repeats a value"):
        pretrain_variants(sweep_config_from_tree(tree))


def test_sharpness_is_read_against_forgetting_within_each_setting() -> None:
    tokens = [250_000, 500_000, 1_000_000, 2_000_000]
    finetune, sharpness = [], []
    for wd, sign in ((0.1, 1.0), (3.0, -1.0)):  # sharpness rises with forgetting at wd 0.1, falls at wd 3
        for k, t in enumerate(tokens):
            finetune.append({"tokens_seen": t, "task": "t", "lr": 1e-2, "steps": 60, "reg_lambda": 0.0, "seed": 0,
                             "pretrain.train.weight_decay": wd, "forgetting": 0.1 * k})
            sharpness.append({"tokens_seen": t, "measure": "hessian_top", "value": 10 + sign * k, "pretrain.train.weight_decay": wd})
    tables = sharpness_tables(pd.DataFrame(sharpness), pd.DataFrame(finetune))
    [within] = [table for title, table in tables.items() if title.startswith("Sharpness and forgetting within each setting")]
    assert dict(zip(within["setting"], within["Spearman(sharpness, forgetting)"])) == {"wd=0.1": "+1.00", "wd=3": "-1.00"}
    assert tables["Does sharpness predict forgetting? Spearman across settings at each budget"].empty  # 2 settings: too few to rank


def test_sharpness_is_read_against_forgetting_across_settings_at_each_budget() -> None:
    # Four settings whose sharpness and forgetting both grow with tokens, so within each setting they agree
    # perfectly; at a fixed budget the sharper settings forget *less*, which only the across-settings view shows.
    tokens = [250_000, 500_000, 1_000_000]
    finetune, sharpness = [], []
    for rank, wd in enumerate((0.0, 0.1, 1.0, 3.0)):
        for k, t in enumerate(tokens):
            finetune.append({"tokens_seen": t, "task": "t", "lr": 1e-2, "steps": 60, "reg_lambda": 0.0, "seed": 0,
                             "pretrain.train.weight_decay": wd, "forgetting": 0.1 * k + 0.01 * (3 - rank)})
            sharpness.append({"tokens_seen": t, "measure": "hessian_top", "value": 10.0 * (k + 1) + rank, "pretrain.train.weight_decay": wd})
    finetune.append({**finetune[-1], "reg_lambda": 0.5, "forgetting": 99.0})  # a remedy run: not plain fine-tuning, left out
    tables = sharpness_tables(pd.DataFrame(sharpness), pd.DataFrame(finetune))
    [within] = [table for title, table in tables.items() if title.startswith("Sharpness and forgetting within each setting")]
    assert set(within["Spearman(sharpness, forgetting)"]) == {"+1.00"}
    across = tables["Does sharpness predict forgetting? Spearman across settings at each budget"]
    assert list(across["budget"]) == ["250k", "500k", "1M"] and set(across["settings"]) == {4}
    assert set(across["Spearman(sharpness, forgetting)"]) == {"-1.00"} and set(across["sharpest setting"]) == {"wd=3"}


def test_the_report_of_a_factor_sweep_carries_the_study_tables(tmp_path: Path) -> None:
    from overtrain.results.records import Job, JobOutput
    from overtrain.results.report import write_report
    from overtrain.results.store import ResultStore

    store_path = tmp_path / "results.sqlite"
    with ResultStore(store_path) as store:
        # The loss after turns up past 1M at weight decay 1 and 3; weight decay 1 has one pre-training seed,
        # whose rise cannot be weighed against any noise.
        for wd, rise, seeds in ((0.1, 0.0, (0, 1)), (1.0, 0.3, (0,)), (3.0, 0.3, (0, 1))):
            for seed in seeds:
                for k, tokens in enumerate([250_000, 500_000, 1_000_000, 2_000_000]):
                    before = 3.0 - 0.3 * k + 0.01 * seed
                    after = before + 0.3 + (0.25 + rise * (k >= 2) + rise * (k == 3)) * k
                    metrics = {"checkpoint": f"c{wd}-{seed}-{tokens}", "tokens_seen": tokens, "task": "python-code", "lr": 1e-2, "seed": 0,
                               "reg_lambda": 0.0, "steps": 60, "id_loss_before": 3.0, "id_loss_after": 2.0, "id_accuracy_before": None,
                               "id_accuracy_after": None, "ood_loss_before": before, "ood_loss_after": after, "train_tokens": 1000,
                               "forgetting": after - before, "factors": {"train.weight_decay": wd, "train.seed": seed}}
                    store.put(Job("finetune", {"checkpoint": f"c{wd}-{seed}-{tokens}"}), JobOutput(metrics), {}, 1.0)
    report = write_report(store_path, tmp_path / "report")
    verdicts = report.tables["Fine-tuning U per setting: loss after fine-tuning, U and inflection"]
    assert dict(zip(verdicts["setting"], verdicts["U-shaped"])) == {"wd=0.1": "no", "wd=1": "untested (1 unit)", "wd=3": "yes"}
    assert "Forgetting growth vs base gain per doubling" in (tmp_path / "report" / "summary.md").read_text()
