"""One objective per configured stage (``train.stages``), and the tokens the stages add."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from muco.config import (
    CoMaCompressStage,
    CoMaContrastiveStage,
    PairsConfig,
    StagePlan,
    TrainConfig,
)
from muco.model.special_tokens import compression_tokens
from muco.training.objectives.base import Objective
from muco.training.pairs import M3TPairs, MMEBTrainPairs, PairSource


def stage_tokens(cfg: TrainConfig) -> list[str]:
    """Special tokens the configured stages need beyond ``<|emb|>`` / ``<|mask|>``: CoMa's
    compression tokens, as many as its largest stage uses."""
    counts = [
        stage.compression_tokens
        for stage in cfg.stages
        if isinstance(stage, CoMaCompressStage | CoMaContrastiveStage)
    ]
    return compression_tokens(max(counts)) if counts else []


def pair_source(pairs: PairsConfig, records: Path, image_root: Path, seed: int) -> PairSource:
    """The pair data a stage's ``pairs`` names (``m3t``: the stage's own records)."""
    if pairs.kind == "m3t":
        return M3TPairs(records, image_root, seed=seed)
    assert pairs.path is not None and pairs.images is not None
    return MMEBTrainPairs(
        pairs.path,
        pairs.images,
        subsets=pairs.subsets,
        split=pairs.split,
        descriptions=pairs.descriptions,
        seed=seed,
    )


def build_objective(
    plan: StagePlan,
    cfg: TrainConfig,
    processor: Any,
    records: Path,
    image_root: Path,
    zero3: bool,
) -> Objective:
    """The objective of ``plan``'s method, on ``records`` / ``image_root`` or its own pairs."""
    from muco.training.objectives.cocoa import (
        CoCoAContrastiveObjective,
        CoCoAReconstructObjective,
    )
    from muco.training.objectives.coma import CoMaCompressObjective, CoMaContrastiveObjective
    from muco.training.objectives.muco import MucoObjective, MucoReconstructionObjective
    from muco.training.objectives.unime import (
        UniMEDistillObjective,
        UniMEHardNegativeObjective,
    )

    method = plan.method
    if method in ("muco", "single_turn"):
        return MucoObjective(plan, cfg, zero3, processor, records, image_root)
    if method == "coma_compress":
        return CoMaCompressObjective(plan, cfg, zero3, processor, records, image_root)
    pairs = pair_source(plan.config.pairs, records, image_root, cfg.seed)
    classes = {
        "muco_stage2": MucoReconstructionObjective,
        "unime_distill": UniMEDistillObjective,
        "unime_hard_negative": UniMEHardNegativeObjective,
        "coma_contrastive": CoMaContrastiveObjective,
        "cocoa_reconstruct": CoCoAReconstructObjective,
        "cocoa_contrastive": CoCoAContrastiveObjective,
    }
    return classes[method](plan, cfg, zero3, processor, pairs)
