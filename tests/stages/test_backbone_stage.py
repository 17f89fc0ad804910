"""Stage `backbone`: the tiny backbone is materialised, reloadable, and described in metrics."""

from __future__ import annotations

import json
from pathlib import Path

from muco.model.backbone import load_backbone
from muco.stages import backbone as backbone_stage


def test_backbone_stage_builds_and_reports_the_tiny_backbone(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "backbone:\n  source: tiny\n"
        "  tiny: {family: qwen2_5_vl, hidden_size: 32, vocab_size: 512}\n"
    )
    out, metrics = tmp_path / "models" / "backbone", tmp_path / "backbone.json"
    assert (
        backbone_stage.main(["--params", str(params), "--out", str(out), "--metrics", str(metrics)])
        == 0
    )
    report = json.loads(metrics.read_text())
    assert report["model_type"] == "qwen2_5_vl"
    assert report["hidden_size"] == 32
    loaded = load_backbone(out)
    assert report["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert report["tokenizer_size"] == len(loaded.processor.tokenizer)


def test_backbone_stage_rejects_a_missing_checkpoint(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("backbone:\n  source: ./checkpoints/absent\n")
    assert backbone_stage.main(["--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoints/absent" in capsys.readouterr().err
