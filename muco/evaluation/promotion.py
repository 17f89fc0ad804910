"""Champion promotion: a new model replaces the champion only when it is clearly better.

The champion is a small JSON pointer (``champion.json``: the model, the content hash DVC
recorded for it, its headline scores, when and why it was promoted) plus an append-only
``history.jsonl`` of every promotion. Both are plain files meant to be committed with git, so
the champion is versioned with the code; the model itself stays in DVC's cache under its hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from muco.io import atomic_write_json

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"
# Summary entries that are not scores: chance levels and counts.
_NOT_SCORES = ("/chance", "datasets", "queries", "configurations")


def headline_scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"<benchmark>/<summary key>": value}`` of ``metrics/eval.json``'s evaluated model.

    Every overall and per-group/meta-task mean; not chance levels, counts or the baseline.
    """
    return {
        f"{benchmark}/{key}": float(value)
        for benchmark, result in metrics.items()
        if benchmark != "baseline"
        for key, value in result["summary"].items()
        if not key.endswith(_NOT_SCORES)
    }


@dataclass(frozen=True)
class Champion:
    """The promoted model: where it is, its DVC content hash, its scores, and why."""

    model: str
    model_md5: str
    scores: dict[str, float]
    promoted_at: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """Whether a candidate replaces the champion, and a sentence that says why (not)."""

    promote: bool
    reason: str
    candidate: float
    champion: float | None


def decide(
    candidate_scores: Mapping[str, float],
    champion: Champion | None,
    metric: str,
    margin: float,
) -> Decision:
    """Promote when there is no champion, or the candidate beats it by more than ``margin``.

    A candidate that is the champion itself (same ``model_md5``) is never "promoted" again:
    the caller checks that before; here only scores count.
    """
    if metric not in candidate_scores:
        known = ", ".join(sorted(candidate_scores)) or "none"
        raise ValueError(f"promote.metric {metric!r} is not among the scores ({known})")
    score = candidate_scores[metric]
    if champion is None:
        return Decision(True, f"no champion yet; {metric} = {score:.2f}", score, None)
    if metric not in champion.scores:
        return Decision(
            True, f"the champion has no {metric} score; candidate {score:.2f}", score, None
        )
    best = champion.scores[metric]
    if score > best + margin:
        reason = f"{metric} {score:.2f} beats the champion's {best:.2f} by more than {margin}"
        return Decision(True, reason, score, best)
    reason = (
        f"{metric} {score:.2f} does not beat the champion's {best:.2f} by more than {margin} "
        f"(champion: {champion.model}, promoted {champion.promoted_at})"
    )
    return Decision(False, reason, score, best)


def read_champion(directory: Path) -> Champion | None:
    """The current champion, or None before the first promotion."""
    path = Path(directory) / CHAMPION_FILE
    if not path.exists():
        return None
    try:
        return Champion(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path}: not a champion record ({error})") from None


def promote(
    directory: Path, model: str, model_md5: str, scores: Mapping[str, float], reason: str
) -> Champion:
    """Make ``model`` the champion: rewrite the pointer atomically, append to the history."""
    champion = Champion(
        model=model,
        model_md5=model_md5,
        scores=dict(scores),
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        reason=reason,
    )
    directory = Path(directory)
    atomic_write_json(directory / CHAMPION_FILE, asdict(champion))
    with open(directory / HISTORY_FILE, "a", encoding="utf-8") as history:
        history.write(json.dumps(asdict(champion), sort_keys=True) + "\n")
    return champion
