"""The Dagster code location loads, and assets materialise in-process through the DVC resource."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, asset, materialize
from muco_scratch import tiny_params

from orchestration.assets import GATE_CHECK, image_pool, m3t_records, validated_records
from orchestration.definitions import defs
from orchestration.dvc import DvcError, DvcResource
from orchestration.stages import stage_code_version, stage_graph

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_with_assets_resources_and_job() -> None:
    graph = defs.resolve_asset_graph()
    assert graph.get_all_asset_keys() == {
        AssetKey("image_pool"),
        AssetKey("backbone"),
        AssetKey("m3t_records"),
        AssetKey("validated_records"),
        AssetKey("embedding_model"),
        AssetKey("benchmark_scores"),
        AssetKey("champion_model"),
    }
    assert graph.get(AssetKey("benchmark_scores")).parent_keys == {
        AssetKey("embedding_model"),
        AssetKey("backbone"),
        AssetKey("image_pool"),
    }
    assert graph.get(AssetKey("m3t_records")).parent_keys == {AssetKey("image_pool")}
    assert defs.resolve_job_def("pipeline") is not None
    node = graph.get(AssetKey("image_pool"))
    assert node.code_version == stage_code_version(REPO_ROOT, "images")
    assert image_pool.op.pool == "dvc_workspace"


def test_the_dagster_graph_is_the_dvc_stage_graph() -> None:
    graph = defs.resolve_asset_graph()
    stage_of = {
        node.key: node.tags["dvc_stage"] for node in graph.asset_nodes if "dvc_stage" in node.tags
    }
    dagster_edges = {
        (stage_of[parent], stage_of[node.key])
        for node in graph.asset_nodes
        if node.key in stage_of
        for parent in node.parent_keys
        if parent in stage_of
    }
    dvc_edges = {
        (upstream, stage)
        for stage, upstreams in stage_graph(REPO_ROOT).items()
        for upstream in upstreams
    }
    assert dagster_edges == dvc_edges
    assert set(stage_of.values()) == set(stage_graph(REPO_ROOT))


def test_every_asset_but_the_champion_names_a_dvc_stage() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for node in defs.resolve_asset_graph().asset_nodes:
        if node.key != AssetKey("champion_model"):
            assert node.tags["dvc_stage"] in stages


def test_image_pool_materialises_through_dvc(dvc_workspace: Path) -> None:
    resource = DvcResource(repo_root=str(dvc_workspace))
    with DagsterInstance.ephemeral() as instance:
        result = materialize([image_pool], resources={"dvc": resource}, instance=instance)
        assert result.success
        lock = yaml.safe_load((dvc_workspace / "dvc.lock").read_text())
        outs_md5 = lock["stages"]["images"]["outs"][0]["md5"]
        event = result.asset_materializations_for_node("image_pool")[0]
        assert event.metadata["images"].value == 12, event.metadata
        assert event.metadata["rejected"].value == 0
        assert event.metadata["dvc_outs_md5"].value == outs_md5
        assert "data:image/png;base64," in event.metadata["thumbnails"].value
        assert (dvc_workspace / "data" / "images" / "manifest.parquet").exists()
        recorded = instance.get_latest_materialization_event(AssetKey("image_pool"))
        assert recorded.asset_materialization.tags["dagster/data_version"] == outs_md5, (
            recorded.asset_materialization.tags
        )

        # Nothing changed: DVC skips the stage and the data version stays the same.
        logs: list[str] = []
        resource.repro("images", logs.append)
        assert any("didn't change" in line for line in logs)
        again = materialize([image_pool], resources={"dvc": resource}, instance=instance)
        assert (
            again.asset_materializations_for_node("image_pool")[0].metadata["dvc_outs_md5"].value
            == outs_md5
        )


def test_failing_stage_raises_with_the_stage_output(dvc_workspace: Path) -> None:
    params = yaml.safe_load((dvc_workspace / "params.yaml").read_text())
    params["images"]["source"]["imagesize"] = 3
    (dvc_workspace / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DvcError, match=r"images\.source\.scenes\.imagesize: unknown key"):
        DvcResource(repo_root=str(dvc_workspace)).repro("images", lambda line: None)


def test_data_version_before_any_run_is_a_clear_error(dvc_workspace: Path) -> None:
    with pytest.raises(DvcError, match="has not run"):
        DvcResource(repo_root=str(dvc_workspace)).data_version("images")


def test_m3t_records_materialise_downstream_of_the_pool(dvc_workspace: Path) -> None:
    resource = DvcResource(repo_root=str(dvc_workspace))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [image_pool, m3t_records], resources={"dvc": resource}, instance=instance
        )
        assert result.success
        event = result.asset_materializations_for_node("m3t_records")[0]
        # the scratch pool has 8 training scenes; the 4 test scenes are not synthesised
        assert event.metadata["records"].value == 8
        assert event.metadata["turns"].value == 56
        assert event.metadata["rejected"].value == 0
        assert event.metadata["generated"].value == 8
        sample = event.metadata["sample_records"].value
        assert sample.count("\n") == 1 + 2 * 7  # header, rule, two records of seven turns
        lock = yaml.safe_load((dvc_workspace / "dvc.lock").read_text())
        outs = {o["path"]: o["md5"] for o in lock["stages"]["synthesize"]["outs"]}
        assert event.metadata["dvc_outs_md5"].value == outs["data/m3t"]


def _set_min_records(workspace: Path, value: int) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["validate"]["min_records"] = value
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))


@asset(deps=["validated_records"])
def downstream_of_gate() -> None:
    """Stands in for training: it must never run on data the gate refused."""


def test_failing_gate_is_a_failed_blocking_check_that_stops_downstream(
    dvc_workspace: Path,
) -> None:
    _set_min_records(dvc_workspace, 1000)  # 8 records can never pass
    resource = DvcResource(repo_root=str(dvc_workspace))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [image_pool, m3t_records, validated_records, downstream_of_gate],
            resources={"dvc": resource},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        (evaluation,) = [
            e for e in result.get_asset_check_evaluations() if e.check_name == GATE_CHECK
        ]
        assert evaluation.check_name == GATE_CHECK and not evaluation.passed
        assert "fewer than validate.min_records 1000" in evaluation.metadata["failures"].value
        assert evaluation.metadata["valid"].value == 8
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        assert AssetKey("validated_records") in materialized
        assert AssetKey("downstream_of_gate") not in materialized


def test_passing_gate_lets_downstream_run(dvc_workspace: Path) -> None:
    _set_min_records(dvc_workspace, 8)
    resource = DvcResource(repo_root=str(dvc_workspace))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [image_pool, m3t_records, validated_records, downstream_of_gate],
            resources={"dvc": resource},
            instance=instance,
        )
        assert result.success
        (evaluation,) = [
            e for e in result.get_asset_check_evaluations() if e.check_name == GATE_CHECK
        ]
        assert evaluation.passed
        event = result.asset_materializations_for_node("validated_records")[0]
        lock = yaml.safe_load((dvc_workspace / "dvc.lock").read_text())
        assert "validate" in lock["stages"]
        assert event.metadata["gate_passed"].value is True


def test_embedding_model_metadata_has_losses_throughput_and_the_curve(tmp_path: Path) -> None:
    from orchestration.assets import embedding_model_metadata

    (tmp_path / "metrics" / "timings").mkdir(parents=True)
    (tmp_path / "metrics" / "train_log.csv").write_text(
        "step,loss,lr,grad_norm,pairs_per_s,tokens_per_s\n1,4.0,0.1,1,10,100\n2,3.0,0.1,1,10,100\n"
    )
    (tmp_path / "metrics" / "timings" / "train.json").write_text(
        json.dumps({"pairs_per_s": 12.5, "tokens_per_s": 900.0})
    )
    metrics = {"final_loss": 3.0, "first_loss": 4.0, "steps": 2, "trainable_parameters": 7}
    meta = embedding_model_metadata(tmp_path, metrics)
    assert meta["final_loss"].value == 3.0 and meta["pairs_per_s"].value == 12.5
    assert meta["loss_curve"].value.startswith("![loss curve](data:image/png;base64,iVBOR")


def test_whole_graph_materialises_through_dvc(dvc_workspace: Path) -> None:
    (dvc_workspace / "params.yaml").write_text(yaml.safe_dump(tiny_params(whole_graph=True)))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            list(defs.assets),
            resources={"dvc": DvcResource(repo_root=str(dvc_workspace))},
            instance=instance,
        )
        assert result.success
        event = result.asset_materializations_for_node("embedding_model")[0]
        assert event.metadata["steps"].value == 2
        assert "data:image/png" in event.metadata["loss_curve"].value
        assert (dvc_workspace / "models" / "muco" / "model.safetensors").exists()


def test_code_versions_follow_code_not_upstream_data(tmp_path: Path) -> None:
    stages = {
        "make": {"cmd": "python make.py", "deps": ["make.py"], "outs": ["data/made"]},
        "use": {"cmd": "python use.py", "deps": ["data/made/part.txt", "use.py"], "outs": ["u"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "data" / "made").mkdir(parents=True)
    (tmp_path / "data" / "made" / "part.txt").write_text("first data")
    (tmp_path / "make.py").write_text("print(1)")
    (tmp_path / "use.py").write_text("print(2)")
    before = stage_code_version(tmp_path, "use")
    (tmp_path / "data" / "made" / "part.txt").write_text("new data")
    assert stage_code_version(tmp_path, "use") == before
    (tmp_path / "use.py").write_text("print(3)")
    assert stage_code_version(tmp_path, "use") != before
    assert stage_graph(tmp_path) == {"make": set(), "use": {"make"}}
