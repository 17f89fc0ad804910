"""The asset checks on every stage asset, each passing and failing on hand-made metrics."""

from __future__ import annotations

from dagster import AssetCheckSeverity

from orchestration.assets import backbone_check, pool_check, synthesis_check, training_check


def test_pool_health() -> None:
    (ok,) = pool_check({"images": 95, "rejected": 5}, {})
    assert ok.passed and ok.severity == AssetCheckSeverity.WARN
    (bad,) = pool_check({"images": 80, "rejected": 20}, {})
    assert not bad.passed
    assert bad.metadata["verdict"].text == "80 images, 20 rejected (20.0%; limit 10%)"
    (empty,) = pool_check({"images": 0, "rejected": 0}, {})
    assert not empty.passed


def test_supported_backbone() -> None:
    (ok,) = backbone_check({"model_type": "qwen2_5_vl", "parameters": 10}, {})
    assert ok.passed and ok.severity == AssetCheckSeverity.ERROR
    (bad,) = backbone_check({"model_type": "llava", "parameters": 10}, {})
    assert not bad.passed and "llava" in bad.metadata["verdict"].text


def test_synthesis_yield() -> None:
    assert synthesis_check({"records": 600, "rejected": 0}, {})[0].passed
    (bad,) = synthesis_check({"records": 10, "rejected": 90}, {})
    assert not bad.passed and bad.metadata["reject_share"].value == 0.9


def test_loss_decreased_blocks_divergence() -> None:
    assert training_check({"first_loss": 4.0, "final_loss": 0.4}, {})[0].passed
    (flat,) = training_check({"first_loss": 4.0, "final_loss": 4.0}, {})
    assert not flat.passed and flat.severity == AssetCheckSeverity.ERROR
    assert not training_check({"first_loss": 4.0, "final_loss": float("nan")}, {})[0].passed
