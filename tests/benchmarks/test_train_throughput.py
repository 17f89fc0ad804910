"""benchmarks/train_throughput.py: the rate arithmetic on a hand-made log, the runs' params."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from script_loader import load_script

from muco.config import BackboneConfig, TrainConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    with load_script(SCRIPT) as module:
        yield module


def _log(step_ends: list[float], tokens_per_step: float, pairs_per_step: int) -> list[dict]:
    """Cumulative rows as the train stage logs them, for steps ending at ``step_ends`` s."""
    return [
        {
            "step": step,
            "pairs_per_s": step * pairs_per_step / end,
            "tokens_per_s": step * tokens_per_step / end,
        }
        for step, end in enumerate(step_ends, start=1)
    ]


def test_steady_rates_drop_the_first_step_and_take_the_median(script: ModuleType) -> None:
    # Steps of 5 s (warm-up), then 1, 1, 4 (a spike) and 1 s; 10 pairs and 100 tokens each.
    log = _log([5.0, 6.0, 7.0, 11.0, 12.0], tokens_per_step=100.0, pairs_per_step=10)
    rates = script.steady_rates([log], pairs_per_step=10)
    assert rates["steps_timed"] == 4
    assert rates["first_step_s"] == pytest.approx([5.0])
    assert rates["step_seconds"] == pytest.approx([1.0, 1.0, 4.0, 1.0])
    assert rates["median_step_s"] == pytest.approx(1.0)
    assert rates["pairs_per_s"] == pytest.approx(10.0)
    assert rates["tokens_per_s"] == pytest.approx(100.0)
    assert rates["mean_pairs_per_s"] == pytest.approx(40 / 7)
    assert rates["tokens_per_pair"] == pytest.approx(10.0)


def test_a_log_of_one_step_is_an_error(script: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        script.steady_rates([_log([1.0], 1.0, 1)], pairs_per_step=1)


def test_the_2b_runs_train_the_reference_way(script: ModuleType) -> None:
    spec = script.RunSpec("muco_zero3", "muco", 8, 4, 3)
    base = TrainConfig().model_dump(mode="json")
    backbone = BackboneConfig(**script.REFERENCE_2B)
    params = script.train_params(base, backbone, spec, steps=6, size="2b")
    train = TrainConfig.model_validate(params["train"])
    assert train.precision == "bf16"
    assert train.gradient_checkpointing
    assert train.finetune.mode == "lora" and train.finetune.freeze_vision
    assert train.deepspeed.zero_stage == 3
    assert (train.global_batch_size, train.micro_batch_size, train.max_steps) == (8, 4, 6)
    loaded = BackboneConfig.model_validate(params["backbone"])
    assert (loaded.min_pixels, loaded.max_pixels) == (256 * 28 * 28, 1280 * 28 * 28)
    assert loaded.dtype == "bfloat16"
    tiny = TrainConfig.model_validate(
        script.train_params(base, BackboneConfig(), spec, steps=6, size="tiny")["train"]
    )
    # The tiny runs keep the repository's own set-up.
    assert tiny.precision == base["precision"]
    assert tiny.finetune.mode == base["finetune"]["mode"]
