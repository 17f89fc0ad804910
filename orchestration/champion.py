"""The ``champion_model`` asset: promotion of the trained model when it beats the champion.

Not a DVC stage: promotion depends on the champion before it, not only on its inputs, so it
cannot be a pure function of ``dvc.lock``. The decision itself is :func:`muco.evaluation.
promotion.decide`; this asset reads the scores and the parameters, writes the pointer
(``champion/champion.json`` and ``history.jsonl``, meant for git) and a hard-linked copy of the
model in ``models/champion/`` (the trained model's directory is overwritten by the next run).
"""
# No `from __future__ import annotations` here: Dagster inspects the real `context` annotation.

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from muco.config import load_params
from muco.evaluation.promotion import Decision, decide, headline_scores, promote, read_champion
from muco.io import copy_tree_linked
from orchestration.assets import OWNERS, WORKSPACE_POOL
from orchestration.dvc import DvcResource

CHAMPION_CHECK = "beats_champion"
CHAMPION_DIR = "champion"
CHAMPION_MODEL_DIR = "models/champion"
TRAINED_MODEL_DIR = "models/muco"


@asset(
    name="champion_model",
    description=(
        "The best model so far (models/champion, pointer in champion/champion.json): replaced "
        "only when a newly trained model beats it by promote.margin on promote.metric."
    ),
    deps=["benchmark_scores"],
    kinds={"json", "safetensors"},
    owners=OWNERS,
    group_name="pipeline",
    pool=WORKSPACE_POOL,
    check_specs=[
        AssetCheckSpec(
            CHAMPION_CHECK,
            asset="champion_model",
            blocking=False,
            description="the new model was promoted, or why it was not",
        )
    ],
)
def champion_model(context: AssetExecutionContext, dvc: DvcResource) -> MaterializeResult:
    settings = load_params(dvc.root / "params.yaml").promote
    scores = headline_scores(dvc.read_json("metrics/eval.json"))
    model_md5 = dvc.data_version("train")
    directory = dvc.root / CHAMPION_DIR
    champion = read_champion(directory)
    if champion is not None and champion.model_md5 == model_md5:
        reason = "this model is already the champion"
        decision = Decision(False, reason, scores.get(settings.metric, float("nan")), None)
    else:
        decision = decide(scores, champion, settings.metric, settings.margin)
    if decision.promote:
        copy_tree_linked(dvc.root / TRAINED_MODEL_DIR, dvc.root / CHAMPION_MODEL_DIR)
        champion = promote(directory, CHAMPION_MODEL_DIR, model_md5, scores, decision.reason)
        context.log.info(f"promoted: {decision.reason}")
    else:
        context.log.info(f"kept the champion: {decision.reason}")
    passed = decision.promote or (champion is not None and champion.model_md5 == model_md5)
    return MaterializeResult(
        metadata={
            "promoted": MetadataValue.bool(decision.promote),
            "reason": MetadataValue.text(decision.reason),
            "metric": MetadataValue.text(settings.metric),
            "margin": MetadataValue.float(settings.margin),
            "candidate_score": MetadataValue.float(decision.candidate),
            "champion_model_md5": MetadataValue.text(champion.model_md5 if champion else ""),
            "champion_scores": MetadataValue.json(champion.scores if champion else {}),
        },
        data_version=DataVersion(champion.model_md5) if champion else None,
        check_results=[
            AssetCheckResult(
                check_name=CHAMPION_CHECK,
                passed=passed,
                severity=AssetCheckSeverity.WARN,
                metadata={"reason": MetadataValue.text(decision.reason)},
            )
        ],
    )
