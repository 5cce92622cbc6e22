"""Remedies in the linear-network theory (replay, LP-FT, WiSE-FT): exact end points, and what each does to
the inflection and the fine-tuning loss in the default setting (docs/theory.md, "Remedies")."""

from __future__ import annotations

import re

import numpy as np
import pytest

from overtrain.cli.theory import load_theory_config
from overtrain.errors import OvertrainError
from overtrain.theory.finetuning import (
    RemedyRun,
    finetune_remedies,
    finetune_sweeps,
    interpolate_weights,
    remedy_sweeps,
    wise_outcome,
)
from overtrain.theory.sweeps import run_pretraining

FAST = ["pretrain.time_max=128", "pretrain.points_per_octave=2", "finetune.lambdas=[0]", "finetune.lrs=[0.03]"]
"""The default setting on test_theory.py's shorter, coarser T grid (T <= 128), rate 0.03 only."""


@pytest.fixture(scope="module")
def config():
    return load_theory_config(FAST)


@pytest.fixture(scope="module")
def run(config):
    return run_pretraining(config)


@pytest.fixture(scope="module")
def plain(run, config):
    return finetune_sweeps(run, config)[0].settings[0]  # lr = 0.03 = remedy_lr, no penalty


@pytest.fixture(scope="module")
def remedies(run, config):
    return remedy_sweeps(run, config)


def _by_value(sweep):
    return {setting.value: setting for setting in sweep.settings}


def _inflection(sweep, value):
    setting = _by_value(sweep)[value]
    return sweep.inflections()[setting.label]


def test_replay_fraction_zero_is_exactly_plain_finetuning(remedies, plain) -> None:
    zero = _by_value(remedies["replay"])[0.0]
    for name in ("after_samples", "task_loss", "train_loss"):
        np.testing.assert_array_equal(getattr(zero, name), getattr(plain, name))


def test_replay_fraction_zero_is_exact_on_a_finite_noisy_sample_too() -> None:
    config = load_theory_config(FAST[:2] + ["target.samples=24", "target.data_seeds=2", "finetune.lambdas=[0]", "finetune.lrs=[0.03]"])
    run = run_pretraining(config)
    plain = finetune_sweeps(run, config)[0].settings[0]
    outcomes = finetune_remedies(run, config, [RemedyRun(0.03, replay=0.0), RemedyRun(0.03, replay=0.3)])
    np.testing.assert_array_equal(outcomes[RemedyRun(0.03, replay=0.0)].outcome.pretrain_loss, plain.after_samples)
    assert not np.array_equal(outcomes[RemedyRun(0.03, replay=0.3)].outcome.pretrain_loss, plain.after_samples)


def test_wise_alpha_zero_and_one_give_the_pretrained_and_finetuned_losses_exactly(run, config, plain) -> None:
    tuned = finetune_remedies(run, config, [RemedyRun(0.03)])[RemedyRun(0.03)].weights
    pre = run.weights.repeat(1)
    at_zero, at_one = interpolate_weights(pre, tuned, 0.0), interpolate_weights(pre, tuned, 1.0)
    np.testing.assert_array_equal(at_zero.first, pre.first)
    np.testing.assert_array_equal(at_zero.second, pre.second)
    np.testing.assert_array_equal(at_one.first, tuned.first)
    np.testing.assert_array_equal(at_one.second, tuned.second)
    np.testing.assert_array_equal(wise_outcome(run, config, tuned, 0.0).pretrain_loss[0], run.pretrain_losses())
    one = wise_outcome(run, config, tuned, 1.0)
    np.testing.assert_array_equal(one.pretrain_loss, plain.after_samples)
    np.testing.assert_array_equal(one.task_loss, plain.task_loss)


def test_lpft_without_probe_steps_is_plain_and_its_probe_phase_moves_only_w2(run, config, remedies, plain) -> None:
    np.testing.assert_array_equal(_by_value(remedies["lpft"])[0].after_samples, plain.after_samples)
    from overtrain.theory.finetuning import finetune_tasks, layerwise_descent
    from overtrain.theory.targets import QuadraticTask

    task = finetune_tasks(run, config)
    task = QuadraticTask(task.cross_covariance[0], None, float(task.constant[0]))
    rates = np.full(len(run.times), 0.03)
    probed = layerwise_descent(run.weights, task, np.zeros_like(rates), rates, 5)  # the probe phase
    np.testing.assert_array_equal(probed.first, run.weights.first)  # W1 frozen, bitwise
    assert np.max(np.abs(probed.second - run.weights.second)) > 0


def test_replay_and_wise_delay_the_inflection_at_a_fine_tuning_cost(remedies, plain) -> None:
    # Measured (T <= 128 grid, rate 0.03): plain 15.4; replay 0.1 / 0.3: 16.4 / 20.6, replay 0.5: no minimum
    # by T = 128; WiSE alpha 0.75: 22.0, alpha 0.5 and 0.25: no U. Loss on A_ft at T = 128 rises with each.
    plain_at = remedies["replay"].inflections()[_by_value(remedies["replay"])[0.0].label].at
    replay = [_inflection(remedies["replay"], r) for r in (0.1, 0.3, 0.5)]
    assert plain_at < replay[0].at < replay[1].at < replay[2].at
    assert not replay[2].interior  # replay 0.5: still falling at the longest T
    wise = [_inflection(remedies["wise"], a) for a in (0.75, 0.5)]
    assert wise[0].u_shaped and wise[0].at > plain_at and not wise[1].u_shaped
    cost = [float(_by_value(remedies["replay"])[r].task_loss[:, -1].mean()) for r in (0.0, 0.1, 0.3, 0.5)]
    assert np.all(np.diff(cost) > 0)
    cost = [float(_by_value(remedies["wise"])[a].task_loss[:, -1].mean()) for a in (1.0, 0.75, 0.5, 0.25)]
    assert np.all(np.diff(cost) > 0)


def test_lpft_moves_the_inflection_earlier_and_lowers_the_finetuning_loss(remedies) -> None:
    # LP-FT here is extra training (probe steps on W2, then the same 100 steps of both): it fits A_ft better
    # and forgets more, so the U comes earlier (plain 15.4; 25 probe steps: 3.6; 100: 2.7), not later.
    plain_at = _inflection(remedies["lpft"], 0).at
    probes = [_inflection(remedies["lpft"], k) for k in (25, 100)]
    assert probes[1].at < probes[0].at < plain_at and all(mark.u_shaped for mark in probes)
    cost = [float(_by_value(remedies["lpft"])[k].task_loss[:, -1].mean()) for k in (0, 25, 100)]
    assert np.all(np.diff(cost) < 0)


def test_bad_remedy_settings_are_refused() -> None:
    for override in ("finetune.replay_fractions=[1.0]", "finetune.wise_alphas=[1.5]", "finetune.probe_steps=[-1]", "finetune.remedy_lr=0"):
        key = override.split("=")[0]
        with pytest.raises(OvertrainError, match=rf"theory setting {re.escape(key)} has a value the simulator cannot use"):
            load_theory_config([override])
