"""``muco compare RUN_A RUN_B``: two recorded evaluation runs side by side, dataset by dataset.

Each dataset is compared on its headline metric; ``delta`` is B minus A, so a positive delta
means B scores higher. A dataset scored in only one run keeps the other side blank.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from muco.evaluation.metrics import DatasetScore
from muco.evaluation.store import (
    RunInfo,
    StoreError,
    load_scores,
    load_summary,
    resolve_run,
)
from muco.stages import EXIT_BAD_INPUT

DEFAULT_DB = Path("results/eval.duckdb")
DB_ENV = "MUCO_RESULTS_DB"


@dataclass(frozen=True)
class ComparisonRow:
    """One dataset's headline metric in runs A and B; ``None`` where a run lacks it."""

    benchmark: str
    group: str
    dataset: str
    meta_task: str
    metric: str
    value_a: float | None
    value_b: float | None

    @property
    def delta(self) -> float | None:
        """B minus A, or ``None`` when either side is missing."""
        if self.value_a is None or self.value_b is None:
            return None
        return self.value_b - self.value_a


@dataclass(frozen=True)
class SummaryDelta:
    """One summary number (an average, a count) in runs A and B."""

    key: str
    value_a: float | int | None
    value_b: float | int | None

    @property
    def delta(self) -> float | int | None:
        """B minus A, or ``None`` when either side is missing."""
        if self.value_a is None or self.value_b is None:
            return None
        return self.value_b - self.value_a


@dataclass(frozen=True)
class Comparison:
    """Two runs compared: per-dataset rows (sorted) and summary rows (A's order first)."""

    run_a: RunInfo
    run_b: RunInfo
    rows: list[ComparisonRow]
    summary: list[SummaryDelta]


def _sort_key(row: ComparisonRow) -> tuple[str, ...]:
    return (row.meta_task.casefold(), row.dataset.casefold(), row.group, row.benchmark)


def compare_scores(
    scores_a: Sequence[DatasetScore], scores_b: Sequence[DatasetScore]
) -> list[ComparisonRow]:
    """Per dataset, the headline metric of each side, sorted by meta-task then dataset.

    Datasets are matched on (benchmark, group, dataset). The metric is A's primary metric
    (B's when A lacks the dataset), read from both sides, so a protocol that changed its
    headline metric shows a blank rather than a difference of two different metrics.
    """
    by_key_a = {(s.benchmark, s.group, s.dataset): s for s in scores_a}
    by_key_b = {(s.benchmark, s.group, s.dataset): s for s in scores_b}
    rows = []
    for key in by_key_a | by_key_b:
        a, b = by_key_a.get(key), by_key_b.get(key)
        reference = a or b
        assert reference is not None  # every key comes from at least one side
        metric = reference.primary
        rows.append(
            ComparisonRow(
                benchmark=reference.benchmark,
                group=reference.group,
                dataset=reference.dataset,
                meta_task=reference.meta_task,
                metric=metric,
                value_a=a.values.get(metric) if a else None,
                value_b=b.values.get(metric) if b else None,
            )
        )
    return sorted(rows, key=_sort_key)


def compare_summaries(
    summary_a: Mapping[str, float | int], summary_b: Mapping[str, float | int]
) -> list[SummaryDelta]:
    """Every summary key of either run: A's keys in A's order, then keys only B has."""
    keys = list(summary_a) + [key for key in summary_b if key not in summary_a]
    return [SummaryDelta(key, summary_a.get(key), summary_b.get(key)) for key in keys]


def compare_runs(db: Path, a: str, b: str, benchmark: str | None = None) -> Comparison:
    """Resolve the run references ``a`` and ``b`` in ``db`` and compare them.

    References are as for :func:`~muco.evaluation.store.resolve_run` (id, prefix, ``latest``,
    ``latest~N``), restricted to ``benchmark`` if given.
    """
    run_a = resolve_run(db, a, benchmark)
    run_b = resolve_run(db, b, benchmark)
    return Comparison(
        run_a=run_a,
        run_b=run_b,
        rows=compare_scores(load_scores(db, run_a.run_id), load_scores(db, run_b.run_id)),
        summary=compare_summaries(load_summary(db, run_a.run_id), load_summary(db, run_b.run_id)),
    )


def format_number(value: float | int | None, *, signed: bool = False) -> str:
    """Scores with two decimals, counts as whole numbers, a missing value as blank."""
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _aligned(table: list[list[str] | None], numeric_from: int) -> list[str]:
    """Rows of cells padded into columns; columns from ``numeric_from`` on align right.

    A ``None`` row becomes a rule under every column.
    """
    rows = [row for row in table if row is not None]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in table:
        if row is None:
            lines.append("  ".join("-" * width for width in widths))
            continue
        cells = [
            cell.rjust(width) if column >= numeric_from else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_comparison(comparison: Comparison) -> str:
    """A plain-text table: the two runs, then per-dataset rows, then the summary rows."""
    groups = {row.group for row in comparison.rows}
    show_group = len(groups) > 1
    header = ["meta-task", *(["group"] if show_group else []), "dataset", "metric"]
    numeric_from = len(header)
    table: list[list[str] | None] = [[*header, "A", "B", "B-A"]]
    for row in comparison.rows:
        cells = [row.meta_task, *([row.group] if show_group else []), row.dataset, row.metric]
        table.append(
            [
                *cells,
                format_number(row.value_a),
                format_number(row.value_b),
                format_number(row.delta, signed=True),
            ]
        )
    table.append(None)
    for item in comparison.summary:
        padding = [""] * (numeric_from - 2)
        table.append(
            [
                "summary",
                *padding,
                item.key,
                format_number(item.value_a),
                format_number(item.value_b),
                format_number(item.delta, signed=True),
            ]
        )
    lines = [
        f"A: {comparison.run_a.describe()}",
        f"B: {comparison.run_b.describe()}",
        "",
        *_aligned(table, numeric_from),
    ]
    return "\n".join(lines)


def default_db() -> Path:
    """``$MUCO_RESULTS_DB`` if set, else ``results/eval.duckdb`` (relative to the cwd)."""
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB)


def main(argv: Sequence[str] | None = None, prog: str = "muco compare") -> int:
    """Print the comparison of two runs; a bad reference or database exits 2 with one line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("run_a", metavar="RUN_A", help="id, id prefix, latest or latest~N")
    parser.add_argument("run_b", metavar="RUN_B", help="id, id prefix, latest or latest~N")
    parser.add_argument(
        "--db", type=Path, default=None, help=f"results database (${DB_ENV} or {DEFAULT_DB})"
    )
    parser.add_argument("--benchmark", help="consider only this benchmark's runs")
    args = parser.parse_args(argv)
    db = args.db or default_db()
    try:
        comparison = compare_runs(db, args.run_a, args.run_b, args.benchmark)
    except (StoreError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_comparison(comparison))
    return 0
