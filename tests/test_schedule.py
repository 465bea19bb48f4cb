"""The ATO schedule: default boundaries scaled from the paper, overrides in steps or fractions, validation."""

from __future__ import annotations

import dataclasses

import pytest

from autotrainonce.ato import Schedule, ScheduleConfig
from autotrainonce.errors import ConfigError


def test_defaults_scale_with_total_steps():
    s = Schedule.build(ScheduleConfig(), total_steps=1000)
    assert (s.controller_start, s.proximal_start, s.lambda_switch, s.controller_lr_decay, s.freeze_at) == (
        100, 200, 490, 490, 510,
    )  # fmt: skip
    assert s.hyper_step == 14 and (s.lambda_low, s.lambda_high) == (10.0, 1000.0)  # 410 search steps / 30
    assert s.mask_interval == 10  # 1% of training without steps_per_epoch
    assert Schedule.build(ScheduleConfig(), 1000, steps_per_epoch=25).mask_interval == 25


def test_hyper_step_derives_from_the_search_window():
    from autotrainonce.ato.schedule import auto_hyper_step

    # ~30 controller updates in the window, at most 20 model steps apart, at least 1
    assert [auto_hyper_step(n) for n in (1, 10, 45, 60, 98, 410, 600, 1338, 40000)] == [1, 1, 2, 2, 3, 14, 20, 20, 20]
    short = Schedule.build(ScheduleConfig(), total_steps=240)  # 4 epochs x 60 steps: window 24..122
    assert short.hyper_step == 3 and len([t for t in range(1, 241) if short.controller_step_due(t)]) == 33
    decide = Schedule.build(ScheduleConfig(decide_at=0.35), total_steps=240)  # window 24..84
    assert decide.hyper_step == 7  # 60 steps / 30 = 2, but at most 4% of 240 steps = 9.6 updates
    assert Schedule.build(ScheduleConfig(hyper_step=7), total_steps=240).hyper_step == 7  # explicit wins


def test_controller_cost_cap_binds_only_in_short_decide_runs():
    from autotrainonce.ato.schedule import CONTROLLER_COST_SHARE, auto_hyper_step

    assert auto_hyper_step(18) == 1 and auto_hyper_step(18, total_steps=248) == 2  # 18 updates > 9.92 allowed
    assert auto_hyper_step(393, total_steps=5616) == 13  # 30 updates << 224 allowed: unchanged
    assert auto_hyper_step(5, total_steps=10) == 5  # tiny run: one update
    cfg = ScheduleConfig(controller_start=0.05, decide_at=0.12, freeze_at=0.25)
    for total, capped in ((248, True), (500, True), (1000, False), (5616, False)):
        s = Schedule.build(cfg, total_steps=total)
        updates = [t for t in range(1, total + 1) if s.controller_step_due(t) and t < s.decide_at]
        assert 1 <= len(updates) <= CONTROLLER_COST_SHARE * total
        assert s.cost_capped is capped  # (where the decide variant's updates also use fewer rows)
    assert not Schedule.build(dataclasses.replace(cfg, hyper_step=5), total_steps=248).cost_capped  # given: no cap
    # the paper variant (no decide_at) keeps the uncapped derivation: 33 updates in a 240-step run
    paper = Schedule.build(ScheduleConfig(), total_steps=240)
    assert paper.hyper_step == 3 and not paper.cost_capped


def test_cost_cap_counts_the_cheaper_updates_of_capped_runs_at_their_cost():
    from autotrainonce.ato.schedule import CONTROLLER_COST_SHARE, REDUCED_UPDATE_COST, auto_hyper_step

    # 18 search steps in 248: whole-batch updates (cost 1) allow 9.92 -> every 2nd step; 64-row ones (0.3) 33
    assert auto_hyper_step(18, total_steps=248, update_cost=REDUCED_UPDATE_COST) == 1
    assert auto_hyper_step(60, total_steps=248, update_cost=0.3) == 2  # 33 allowed, 60 wanted
    cfg = ScheduleConfig(controller_start=0.05, decide_at=0.12, freeze_at=0.25, capped_update_cost=0.3)
    for total, capped, every in ((248, True, 1), (500, True, 1), (1000, False, 2), (5616, False, 13)):
        s = Schedule.build(cfg, total_steps=total)
        assert (s.cost_capped, s.hyper_step) == (capped, every)
        updates = [t for t in range(1, total + 1) if s.controller_step_due(t) and t < s.decide_at]
        assert len(updates) * (0.3 if capped else 1.0) <= CONTROLLER_COST_SHARE * total
    # a 40-step run: 3 search steps, 1.6 whole-batch updates allowed, 5.3 cheaper ones: one per step
    s = Schedule.build(cfg, total_steps=40)
    assert s.cost_capped and s.hyper_step == 1


def test_decide_options_count_the_64_row_updates_unless_the_user_sets_the_rows():
    from autotrainonce.ato.config import AtoConfig

    def built(**options: object) -> Schedule:
        return Schedule.build(AtoConfig.from_options(options).schedule(), total_steps=248)

    assert (built().hyper_step, built().cost_capped) == (1, True)  # 18 updates of 64 rows
    assert built(controller_batch=64).hyper_step == 2  # the user's rows: counted as whole steps, 9 updates
    assert built(variant="paper").hyper_step == 3  # the paper variant: no cap at all (101 steps, 34 updates)
    with pytest.raises(ConfigError, match="hyper_step must be an int >= 1"):
        Schedule.build(ScheduleConfig(hyper_step=0), total_steps=240)


def test_phase_boundaries():
    s = Schedule.build(ScheduleConfig(hyper_step=20), total_steps=1000)
    assert [s.phase(t) for t in (1, 99, 100, 199, 200, 509, 510, 1000)] == [
        "dense", "dense", "search", "search", "search", "search", "frozen", "frozen",
    ]  # fmt: skip
    due = [t for t in range(1, 1001) if s.controller_step_due(t)]
    assert due[0] == 100 and due[-1] == 500 and all(b - a == 20 for a, b in zip(due, due[1:]))
    assert not s.controller_active(99) and s.controller_active(100) and not s.controller_active(510)
    assert not s.proximal_active(199) and s.proximal_active(200) and s.proximal_active(1000)
    assert (s.lam(200), s.lam(489), s.lam(490), s.lam(999)) == (10.0, 10.0, 1000.0, 1000.0)
    masks = [t for t in range(1, 1001) if s.mask_due(t)]
    assert masks[0] == 100 and masks[-1] == 500 and all(b - a == 10 for a, b in zip(masks, masks[1:]))


def test_overrides_in_steps_and_fractions():
    cfg = ScheduleConfig(
        controller_start=5, proximal_start=0.25, lambda_switch=30, controller_lr_decay=0.3, freeze_at=40,
        hyper_step=2, mask_interval=4, lambda_low=1.0, lambda_high=50.0,
    )  # fmt: skip
    s = Schedule.build(cfg, total_steps=100)
    assert (s.controller_start, s.proximal_start, s.lambda_switch, s.controller_lr_decay, s.freeze_at) == (
        5, 25, 30, 30, 40,
    )  # fmt: skip
    assert (s.hyper_step, s.mask_interval, s.lam(29), s.lam(30)) == (2, 4, 1.0, 50.0)
    assert [t for t in range(1, 12) if s.controller_step_due(t)] == [5, 7, 9, 11]
    assert "frozen from 40 of 100" in s.describe()


def test_proximal_before_controller_is_allowed():
    s = Schedule.build(ScheduleConfig(controller_start=0.5, proximal_start=0.1, freeze_at=0.6), 100)
    assert s.phase(20) == "proximal" and s.mask_due(10)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(controller_start=0.6, freeze_at=0.5), "before the mask freezes"),
        (dict(controller_start=51, freeze_at=51), "before the mask freezes"),
        (dict(freeze_at=1.5), "fraction of training"),
        (dict(proximal_start=-3), ">= 0 steps"),
        (dict(lambda_switch="half"), "int \\(steps\\) or a float"),
        (dict(lambda_switch=True), "int \\(steps\\) or a float"),
        (dict(hyper_step=0), "hyper_step"),
        (dict(lambda_high=-1.0), "lambda"),
    ],
)
def test_invalid_schedules(kw, match):
    with pytest.raises(ConfigError, match=match):
        Schedule.build(ScheduleConfig(**kw), total_steps=100)


@pytest.mark.parametrize("total", [0, -5, 2.5, None])
def test_total_steps_must_be_positive_int(total):
    with pytest.raises(ConfigError, match="total_steps"):
        Schedule.build(ScheduleConfig(), total_steps=total)  # type: ignore[arg-type]
