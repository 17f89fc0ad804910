"""The M3T expectation suite in Great Expectations 1.x, defined in code and versioned with it.

Each expectation has a stable project name (the key of ``validate.per_expectation`` and the
reason recorded on a quarantined record) and validates one column of the per-record checks
(:mod:`muco.validation.checks`). The suite runs in a throw-away file-backed GX project so that
its data docs (HTML) can be built into a directory of our choosing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from muco.config import ValidateConfig
from muco.validation.checks import RecordChecks

# GX reports anonymous usage by default; a validation gate must not phone home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx
from great_expectations import expectations as gxe

SUITE_NAME = "m3t_records"
SUITE_VERSION = "1"  # bump when an expectation is added, removed or changes meaning


@dataclass(frozen=True)
class ExpectationSpec:
    """A named expectation: what it requires and how to build it from the config."""

    name: str
    column: str
    description: str
    build: Callable[[ValidateConfig], gxe.Expectation]


def _between(
    column: str,
    low: Callable[[ValidateConfig], int | None],
    high: Callable[[ValidateConfig], int | None],
) -> Callable[[ValidateConfig], gxe.Expectation]:
    return lambda cfg: gxe.ExpectColumnValuesToBeBetween(
        column=column, min_value=low(cfg), max_value=high(cfg)
    )


def _is_true(column: str) -> Callable[[ValidateConfig], gxe.Expectation]:
    return lambda cfg: gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True])


def _is_null(column: str) -> Callable[[ValidateConfig], gxe.Expectation]:
    return lambda cfg: gxe.ExpectColumnValuesToBeNull(column=column)


def _zero(column: str) -> Callable[[ValidateConfig], gxe.Expectation]:
    return _between(column, lambda cfg: 0, lambda cfg: 0)


EXPECTATIONS: tuple[ExpectationSpec, ...] = (
    ExpectationSpec(
        "turn_count",
        "n_turns",
        "exactly validate.turns turns per record",
        _between("n_turns", lambda c: c.turns, lambda c: c.turns),
    ),
    ExpectationSpec(
        "turn_shape",
        "turn_shape_ok",
        "every per-turn field has one entry per turn; every turn has a query",
        _is_true("turn_shape_ok"),
    ),
    ExpectationSpec(
        "turn_types",
        "turn_types_ok",
        "turn types present, in M3T order for k = 7",
        _is_true("turn_types_ok"),
    ),
    ExpectationSpec(
        "non_empty_texts", "empty_texts", "no empty or missing text", _zero("empty_texts")
    ),
    ExpectationSpec(
        "text_min_length",
        "shortest_text",
        "every text has at least validate.min_text_chars characters",
        _between("shortest_text", lambda c: c.min_text_chars, lambda c: None),
    ),
    ExpectationSpec(
        "text_max_length",
        "longest_text",
        "no text longer than validate.max_text_chars characters",
        _between("longest_text", lambda c: None, lambda c: c.max_text_chars),
    ),
    ExpectationSpec(
        "printable_text",
        "nonprintable_texts",
        "no control or format characters except line breaks",
        _zero("nonprintable_texts"),
    ),
    ExpectationSpec(
        "query_differs_from_target",
        "query_equals_target",
        "no query paraphrase equals its own target",
        _zero("query_equals_target"),
    ),
    ExpectationSpec(
        "negative_differs_from_positive",
        "negative_equals_positive",
        "every hard negative differs from its target",
        _zero("negative_equals_positive"),
    ),
    ExpectationSpec(
        "image_path_safe",
        "image_path_problem",
        "image paths relative, without '..', inside the image root after symlinks",
        _is_null("image_path_problem"),
    ),
    ExpectationSpec(
        "image_decodable",
        "image_problem",
        "the image decodes within images.limits",
        _is_null("image_problem"),
    ),
    ExpectationSpec(
        "image_hash_matches",
        "image_hash_mismatch",
        "the recorded image hash is the file's sha256",
        _is_null("image_hash_mismatch"),
    ),
    ExpectationSpec(
        "unique_record",
        "duplicate_of",
        "no record repeats an earlier one",
        _is_null("duplicate_of"),
    ),
    ExpectationSpec(
        "unique_image",
        "duplicate_image_of",
        "no image appears in two records",
        _is_null("duplicate_image_of"),
    ),
    ExpectationSpec(
        "no_eval_leakage",
        "leak",
        "no image or text shared with a configured evaluation set",
        _is_null("leak"),
    ),
)
EXPECTATION_NAMES = tuple(spec.name for spec in EXPECTATIONS)
SCHEMA_EXPECTATION = "schema"  # table level: the checks table has exactly the expected columns
CHECK_COLUMNS = [field.name for field in dataclasses.fields(RecordChecks)]


def build_suite(cfg: ValidateConfig) -> gx.ExpectationSuite:
    """The suite for ``cfg``."""
    suite = gx.ExpectationSuite(name=SUITE_NAME, meta={"suite_version": SUITE_VERSION})
    schema = gxe.ExpectTableColumnsToMatchSet(column_set=CHECK_COLUMNS, exact_match=True)
    schema.meta = {"name": SCHEMA_EXPECTATION, "description": "the checks table's columns"}
    suite.add_expectation(schema)
    for spec in EXPECTATIONS:
        expectation = spec.build(cfg)
        expectation.meta = {"name": spec.name, "description": spec.description}
        suite.add_expectation(expectation)
    return suite


@dataclass(frozen=True)
class SuiteOutcome:
    """Per expectation name: the failing row positions; plus table-level failures."""

    failed_rows: dict[str, list[int]]
    table_failures: list[str]


def run_suite(frame: pd.DataFrame, cfg: ValidateConfig, docs_dir: Path | None) -> SuiteOutcome:
    """Validate ``frame`` (one row per record) and, if ``docs_dir`` is given, build data docs."""
    frame = frame.reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="muco-gx-") as project:
        context = gx.get_context(mode="file", project_root_dir=project)
        context.variables.progress_bars = {"globally": False}
        site = Path(project) / "site"
        context.add_data_docs_site(
            site_name="muco",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(site),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        batch = (
            context.data_sources.add_pandas("records")
            .add_dataframe_asset("m3t_checks")
            .add_batch_definition_whole_dataframe("all")
        )
        suite = context.suites.add(build_suite(cfg))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name="m3t_gate", data=batch, suite=suite)
        )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["muco"])]
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="m3t_gate",
                validation_definitions=[definition],
                actions=actions if docs_dir is not None else [],
                result_format="COMPLETE",
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        (validation,) = result.run_results.values()
        failed_rows: dict[str, list[int]] = {name: [] for name in EXPECTATION_NAMES}
        table_failures: list[str] = []
        for item in validation.results:
            name = item.expectation_config.meta["name"]
            if name == SCHEMA_EXPECTATION:
                if not item.success:
                    table_failures.append(f"{name}: {item.result}")
                continue
            failed_rows[name] = sorted(
                int(i) for i in item.result.get("unexpected_index_list") or []
            )
        if docs_dir is not None:
            shutil.rmtree(docs_dir, ignore_errors=True)
            shutil.copytree(site, docs_dir)
    return SuiteOutcome(failed_rows=failed_rows, table_failures=table_failures)
