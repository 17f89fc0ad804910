"""The evaluation report: a markdown page and PNG charts for one run, optionally against a baseline.

Files written into the report directory (each atomically; the names are fixed so DVC and
links in the page stay stable):

- ``README.md``: run information and settings, summary, per-dataset scores with chance level,
  and with a baseline what differs between the runs and the per-dataset difference;
- ``meta_tasks.png``: mean headline score against mean chance per meta-task, one panel per
  group (e.g. scenes-bench's seen/unseen split, MMEB's IND/OOD);
- ``baseline.png`` (with a baseline only): both runs per dataset.

Means are unweighted over datasets, as MMEB averages its meta-tasks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from muco.evaluation.compare import (
    ComparisonRow,
    compare_scores,
    compare_summaries,
    format_number,
)
from muco.evaluation.metrics import DatasetScore
from muco.evaluation.store import RunInfo
from muco.io import atomic_write_bytes, atomic_write_text
from muco.plots import bar_chart_png, bar_panels_png

REPORT_FILE = "README.md"
META_TASK_CHART = "meta_tasks.png"
BASELINE_CHART = "baseline.png"

Baseline = tuple[RunInfo, list[DatasetScore], Mapping[str, float | int]]


def _cell(value: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int) -> str:
    """A markdown table; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if index < numeric_from else "---:" for index in range(len(header))]
    lines = [
        "| " + " | ".join(_cell(cell) for cell in header) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines.extend("| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def summary_markdown_table(
    summary: Mapping[str, float | int], baseline: Mapping[str, float | int] | None = None
) -> str:
    """The summary as a markdown table; with a baseline summary, its values and the change."""
    if baseline is None:
        rows = [[key, format_number(value)] for key, value in summary.items()]
        return _table(["summary", "value"], rows, numeric_from=1)
    rows = [
        [
            item.key,
            format_number(item.value_b),
            format_number(item.value_a),
            format_number(item.delta, signed=True),
        ]
        for item in compare_summaries(baseline, summary)
    ]
    return _table(["summary", "this run", "baseline", "change"], rows, numeric_from=1)


def scores_markdown_table(scores: Sequence[DatasetScore]) -> str:
    """Per dataset, in evaluation order: headline score, chance level, queries, other cut-offs."""
    show_others = any(len(score.values) > 1 for score in scores)
    header = ["meta-task", "group", "dataset", "metric", "score", "chance", "queries"]
    rows = []
    for score in scores:
        row: list[object] = [
            score.meta_task,
            score.group,
            score.dataset,
            score.primary,
            format_number(score.score),
            format_number(score.chance),
            format_number(score.queries),
        ]
        if show_others:
            others = [
                f"{m} {format_number(v)}" for m, v in score.values.items() if m != score.primary
            ]
            row.append(", ".join(others))
        rows.append(row)
    if show_others:
        header.append("other metrics")
    return _table(header, rows, numeric_from=4)


def difference_markdown_table(rows: Sequence[ComparisonRow]) -> str:
    """Per dataset, baseline (A) against this run (B) and the change B - A."""
    body = [
        [
            row.meta_task,
            row.group,
            row.dataset,
            row.metric,
            format_number(row.value_b),
            format_number(row.value_a),
            format_number(row.delta, signed=True),
        ]
        for row in rows
    ]
    header = ["meta-task", "group", "dataset", "metric", "this run", "baseline", "change"]
    return _table(header, body, numeric_from=4)


def _setting_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _run_rows(run: RunInfo) -> list[list[str]]:
    return [
        ["run", run.run_id],
        ["label", run.label or ""],
        ["created (UTC)", run.created_at],
        ["model", run.model],
        ["model fingerprint", run.model_fingerprint],
        ["benchmark", run.benchmark],
        ["protocol version", run.protocol_version],
        ["data hash", run.data_hash],
    ]


def _differences(baseline: RunInfo, run: RunInfo) -> list[list[str]]:
    """What besides the scores differs between the runs: the first thing to check in a diff."""
    pairs = {
        "model": (baseline.model, run.model),
        "model fingerprint": (baseline.model_fingerprint, run.model_fingerprint),
        "protocol version": (baseline.protocol_version, run.protocol_version),
        "data hash": (baseline.data_hash, run.data_hash),
    }
    for key in sorted(baseline.settings.keys() | run.settings.keys()):
        missing = "(unset)"
        before = baseline.settings.get(key, missing)
        after = run.settings.get(key, missing)
        pairs[f"setting {key}"] = (_setting_text(before), _setting_text(after))
    return [[name, before, after] for name, (before, after) in pairs.items() if before != after]


def meta_task_means(
    scores: Sequence[DatasetScore],
) -> dict[str, dict[str, tuple[float, float]]]:
    """Per group, per meta-task (first-seen order): mean headline score and mean chance."""
    collected: dict[str, dict[str, list[DatasetScore]]] = {}
    for score in scores:
        collected.setdefault(score.group, {}).setdefault(score.meta_task, []).append(score)
    return {
        group: {
            task: (
                sum(s.score for s in members) / len(members),
                sum(s.chance for s in members) / len(members),
            )
            for task, members in tasks.items()
        }
        for group, tasks in collected.items()
    }


def meta_task_chart_png(run: RunInfo, scores: Sequence[DatasetScore]) -> bytes:
    """Score against chance per meta-task, one panel per group."""
    panels = {}
    for group, tasks in meta_task_means(scores).items():
        panels[group] = (
            list(tasks),
            {
                "score": [mean for mean, _ in tasks.values()],
                "chance": [c for _, c in tasks.values()],
            },
        )
    return bar_panels_png(
        panels, title=f"{run.benchmark}: run {run.run_id}", ylabel="mean score (%)", ylim=(0, 100)
    )


def _run_name(prefix: str, run: RunInfo) -> str:
    return f"{prefix} {run.run_id}" + (f" ({run.label})" if run.label else "")


def baseline_chart_png(baseline: RunInfo, run: RunInfo, rows: Sequence[ComparisonRow]) -> bytes:
    """Both runs' headline score per dataset, as horizontal bars (datasets have long names)."""
    several_groups = len({row.group for row in rows}) > 1
    names = [f"{row.dataset} ({row.group})" if several_groups else row.dataset for row in rows]
    series = {
        _run_name("baseline", baseline): [row.value_a for row in rows],
        _run_name("this run", run): [row.value_b for row in rows],
    }
    return bar_chart_png(
        names,
        series,
        title=f"{run.benchmark}: this run against the baseline",
        xlabel="headline score (%)",
        ylabel="",
        horizontal=True,
        size=(7.0, 1.5 + 0.4 * len(rows)),
    )


def render_report(
    run: RunInfo,
    scores: Sequence[DatasetScore],
    summary: Mapping[str, float | int],
    baseline: Baseline | None = None,
) -> str:
    """The markdown page (``README.md``) for ``run``."""
    parts = [
        f"# Evaluation of {run.benchmark}: run {run.run_id}",
        _table(["run", "value"], _run_rows(run), numeric_from=2),
        "## Settings",
        _table(
            ["setting", "value"],
            [[key, _setting_text(run.settings[key])] for key in sorted(run.settings)],
            numeric_from=2,
        )
        if run.settings
        else "No settings recorded.",
        "## Summary",
        summary_markdown_table(summary, baseline[2] if baseline else None),
        "## Per dataset",
        scores_markdown_table(scores),
        f"![mean score against chance per meta-task]({META_TASK_CHART})",
    ]
    if baseline is not None:
        base_run, base_scores, _ = baseline
        differences = _differences(base_run, run)
        parts += [
            f"## Against the baseline: run {base_run.run_id}"
            + (f" ({base_run.label})" if base_run.label else ""),
            f"Baseline: {base_run.describe()}",
            _table(["differs", "baseline", "this run"], differences, numeric_from=3)
            if differences
            else "Same model, protocol, data and settings as the baseline.",
            difference_markdown_table(compare_scores(base_scores, scores)),
            f"![this run against the baseline per dataset]({BASELINE_CHART})",
        ]
    return "\n\n".join(parts) + "\n"


def write_report(
    out_dir: Path,
    run: RunInfo,
    scores: Sequence[DatasetScore],
    summary: Mapping[str, float | int],
    baseline: Baseline | None = None,
) -> list[Path]:
    """Write the report files into ``out_dir``; returns their paths.

    Without a baseline, a ``baseline.png`` left by an earlier report is removed so the
    directory never shows a chart of another run. Other files in ``out_dir`` are untouched.
    """
    if not scores:
        raise ValueError(f"run {run.run_id}: no dataset scores to report")
    out_dir = Path(out_dir)
    written = [out_dir / REPORT_FILE, out_dir / META_TASK_CHART]
    atomic_write_text(written[0], render_report(run, scores, summary, baseline))
    atomic_write_bytes(written[1], meta_task_chart_png(run, scores))
    chart = out_dir / BASELINE_CHART
    if baseline is None:
        chart.unlink(missing_ok=True)
        return written
    base_run, base_scores, _ = baseline
    atomic_write_bytes(
        chart, baseline_chart_png(base_run, run, compare_scores(base_scores, scores))
    )
    return [*written, chart]
