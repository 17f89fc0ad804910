"""``muco summary``: what the pipeline has produced, read from each stage's metrics JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

# Metrics files in pipeline order (metrics/<name>.json).
STAGE_ORDER = ("images", "backbone", "synthesize", "validation", "train", "eval")


def _condense(name: str, metrics: dict) -> dict:
    """Details are for the reports: the summary names failed expectations and headline scores."""
    if name == "eval":
        return _headline_scores(metrics)
    if name == "validation" and "expectations" in metrics:
        failed = {k: v["failed"] for k, v in metrics["expectations"].items() if v["failed"]}
        metrics = {k: v for k, v in metrics.items() if k != "expectations"}
        metrics["failed_expectations"] = failed or "none"
    return metrics


def _headline_scores(metrics: dict) -> dict:
    """``"<benchmark> <mean>" -> "score (baseline b, chance c)"`` for every summary mean."""
    baselines = metrics.get("baseline", {})
    rows = {}
    for benchmark, result in metrics.items():
        if benchmark == "baseline":
            continue
        summary = result["summary"]
        baseline = baselines.get(benchmark, {}).get("summary", {})
        for key, value in summary.items():
            if key.endswith(("/chance", "datasets", "queries", "configurations")):
                continue
            notes = [f"baseline {baseline[key]:.1f}"] if key in baseline else []
            if f"{key}/chance" in summary:
                notes.append(f"chance {summary[f'{key}/chance']:.1f}")
            rows[f"{benchmark} {key}"] = f"{value:.1f}" + (
                f" ({', '.join(notes)})" if notes else ""
            )
    return rows


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "; ".join(_format_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_summary(metrics_dir: Path) -> str:
    """A plain-text table of every stage's metrics found in ``metrics_dir``."""
    found = {path.stem: path for path in sorted(metrics_dir.glob("*.json"))}
    ordered = [s for s in STAGE_ORDER if s in found] + sorted(set(found) - set(STAGE_ORDER))
    if not ordered:
        return f"No stage has run yet: {metrics_dir} holds no metrics. Run `make run`."
    lines = ["muco pipeline summary", "====================="]
    for stage in ordered:
        metrics = _condense(stage, json.loads(found[stage].read_text(encoding="utf-8")))
        lines.append(f"\n[{stage}]  ({found[stage]})")
        width = max(len(key) for key in metrics) if metrics else 0
        lines.extend(f"  {key:<{width}}  {_format_value(value)}" for key, value in metrics.items())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "muco summary") -> int:
    """Print the summary table."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--metrics-dir", type=Path, default=Path("metrics"))
    args = parser.parse_args(argv)
    print(render_summary(args.metrics_dir))
    return 0
