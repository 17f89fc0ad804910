"""``train.stages`` as an ordered list of stage configs, and the per-stage learning rate."""

from __future__ import annotations

import math

import pytest

from muco.config import ConfigError, MucoStage, TrainConfig, parse_params
from muco.training.loop import learning_rate_factor, plan_at


def test_method_names_and_mappings_are_the_same_stage() -> None:
    assert TrainConfig().stages == (MucoStage(),)
    by_name = TrainConfig.model_validate({"stages": ["muco"]})
    by_mapping = TrainConfig.model_validate({"stages": [{"method": "muco"}]})
    assert by_name == by_mapping == TrainConfig()
    assert TrainConfig.model_validate({"stages": ["single_turn"]}).methods == ["single_turn"]


def test_stage_overrides_resolve_into_consecutive_step_ranges() -> None:
    cfg = TrainConfig.model_validate(
        {
            "max_steps": 10,
            "lr": 1e-4,
            "warmup_steps": 3,
            "global_batch_size": 16,
            "micro_batch_size": 4,
            "stages": [
                "unime_distill",
                {"method": "unime_hard_negative", "max_steps": 5, "lr": 2e-4, "warmup_steps": 0},
                {"method": "coma_compress", "global_batch_size": 8, "micro_batch_size": 2},
            ],
        }
    )
    plans = cfg.plan()
    assert [(p.method, p.start, p.steps) for p in plans] == [
        ("unime_distill", 0, 10),
        ("unime_hard_negative", 10, 5),
        ("coma_compress", 15, 10),
    ]
    assert [p.lr for p in plans] == [1e-4, 2e-4, 1e-4]
    assert [p.warmup_steps for p in plans] == [3, 0, 3]
    assert [(p.global_batch_size, p.micro_batch_size) for p in plans] == [(16, 4), (16, 4), (8, 2)]
    assert cfg.total_steps == 25
    assert plan_at(plans, 9).index == 0 and plan_at(plans, 10).index == 1
    assert plan_at(plans, 25).index == 2  # past the end: the last stage
    # Method defaults from METHODS.md.
    stage = cfg.stages[1]
    assert (stage.margin, stage.hard_negatives, stage.temperature) == (0.1, 8, 0.02)
    assert cfg.stages[2].compression_tokens == 32 and cfg.stages[2].block_image


def test_hard_negatives_are_a_switch_of_the_record_stages() -> None:
    stages = [{"method": "muco", "hard_negatives": True}, {"method": "single_turn"}]
    plan = parse_params({"train": {"stages": stages}}).train.plan()
    assert [p.config.hard_negatives for p in plan] == [True, False]
    assert MucoStage().hard_negatives is False


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"method": "unime_hard_negative", "margn": 0.2}], "train.stages.0."),
        ([{"method": "muco_stage2", "hard_negatives": True}], "hard_negatives"),
        (["nope"], "does not match any of the expected tags"),
        ([], "at least one stage"),
        (["single_turn", {"method": "muco", "micro_batch_size": 3}], r"stage 1, muco"),
        (
            [{"method": "muco_stage2", "pairs": {"kind": "mmeb"}}],
            "pairs of kind mmeb need path and images",
        ),
        (
            [{"method": "cocoa_contrastive", "pairs": {"kind": "m3t", "path": "x"}}],
            "pairs of kind m3t",
        ),
    ],
)
def test_bad_stages_are_errors_naming_the_key(stages: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params({"train": {"stages": stages}})


def _old_factor(cfg: TrainConfig, step: int) -> float:
    """The single-schedule factor of the loop before stages existed (for comparison)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_one_stage_keeps_the_old_schedule_exactly(schedule: str) -> None:
    cfg = TrainConfig.model_validate(
        {"max_steps": 30, "warmup_steps": 7, "schedule": schedule, "stages": ["muco"]}
    )
    factor = learning_rate_factor(cfg)
    assert [factor(s) for s in range(32)] == [_old_factor(cfg, s) for s in range(32)]


def test_each_stage_warms_up_and_decays_on_its_own() -> None:
    cfg = TrainConfig.model_validate(
        {
            "lr": 1e-3,
            "schedule": "cosine",
            "warmup_steps": 2,
            "stages": [
                {"method": "muco", "max_steps": 4},
                {"method": "coma_compress", "max_steps": 6, "lr": 5e-4, "warmup_steps": 0},
            ],
        }
    )
    factor = learning_rate_factor(cfg)
    assert [factor(s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    second = [factor(s) for s in range(4, 10)]
    expected = [0.5 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert second == pytest.approx(expected)
