"""The pipeline materialises from the Dagster UI: "Materialize all" on the ``pipeline`` job,
in headless Chromium, against a scratch DVC workspace with tiny data."""

from __future__ import annotations

import json
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB = "pipeline"
# The asset whose page is photographed: the model, the pipeline's main product.
METADATA_ASSET = "embedding_model"
# The whole tiny graph takes one to two minutes on two cores; allow for a slow machine.
RUN_TIMEOUT_S = 900
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def graphql(ui_url: str, query: str, **variables: Any) -> dict[str, Any]:
    """One query against the webserver's GraphQL endpoint; its ``data``."""
    request = urllib.request.Request(
        f"{ui_url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def job_assets(ui_url: str) -> list[str]:
    """Every asset the job materialises, whatever the code location defines today."""
    nodes = graphql(ui_url, "{ assetNodes { assetKey { path } jobNames } }")["assetNodes"]
    return sorted("/".join(n["assetKey"]["path"]) for n in nodes if JOB in n["jobNames"])


RUNS = """query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId status } } }
}"""


def wait_for_run(ui_url: str) -> dict[str, str]:
    """The job's one run, once it has finished."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = graphql(ui_url, RUNS, job=JOB)["runsOrError"]["results"]
        assert len(runs) <= 1, runs
        if runs and runs[0]["status"] in FINISHED:
            return runs[0]
        time.sleep(5)
    pytest.fail(f"the {JOB} run did not finish within {RUN_TIMEOUT_S} s")


STEP_FAILURES = """query Failures($runId: ID!) {
  logsForRun(runId: $runId) { ... on EventConnection { events {
    ... on ExecutionStepFailureEvent {
      stepKey error { message errorChain { error { message } } }
    }
  } } }
}"""


def step_failures(ui_url: str, run_id: str) -> str:
    """Each failed step with its error and the errors that caused it (the DVC output)."""
    events = graphql(ui_url, STEP_FAILURES, runId=run_id)["logsForRun"]["events"]
    return "\n".join(
        "\n".join(
            [f"{e['stepKey']}: {e['error']['message']}"]
            + [link["error"]["message"] for link in e["error"]["errorChain"]]
        )
        for e in events
        if e
    )


LATEST = """query Latest($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetMaterializations(limit: 1) { runId } }
  }
}"""


def latest_run(ui_url: str, asset: str) -> str | None:
    node = graphql(ui_url, LATEST, path=asset.split("/"))["assetNodeOrError"]
    materializations = node["assetMaterializations"]
    return materializations[0]["runId"] if materializations else None


def test_materialize_all_from_the_ui(browser: Any, ui_url: str, screenshots: Path) -> None:
    from playwright.sync_api import expect

    assets = job_assets(ui_url)
    assert METADATA_ASSET in assets, assets
    location = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["dagster"][
        "code_location_name"
    ]
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    page.goto(f"{ui_url}/locations/{location}/jobs/{JOB}")
    page.get_by_role("button", name="Materialize all").click()
    expect(page.get_by_text("Launched run")).to_be_visible(timeout=30_000)
    page.screenshot(path=screenshots / "1-job-launched.png")

    run = wait_for_run(ui_url)
    assert run["status"] == "SUCCESS", step_failures(ui_url, run["runId"])
    assert {asset: latest_run(ui_url, asset) for asset in assets} == dict.fromkeys(
        assets, run["runId"]
    )

    page.goto(f"{ui_url}/asset-groups")
    # The lineage sidebar marks each asset whose latest run succeeded with a green icon; once
    # every one has it, the graph has loaded its live data and is worth a picture.
    succeeded = page.get_by_role("img", name="run_success")
    for asset in assets:
        entry = page.get_by_role("button").filter(has=page.get_by_title(asset, exact=True))
        expect(entry.filter(has=succeeded).first).to_be_visible(timeout=30_000)
    page.screenshot(path=screenshots / "2-asset-graph.png")

    page.goto(f"{ui_url}/assets/{METADATA_ASSET}")
    expect(page.get_by_text("dvc_outs_md5")).to_be_visible(timeout=30_000)
    page.screenshot(path=screenshots / "3-asset-metadata.png", full_page=True)
    page.close()
