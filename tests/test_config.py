"""params.yaml and every profile parse; bad keys and values are errors naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from muco.config import ConfigError, Params, load_params, params_hash, parse_params

REPO = Path(__file__).resolve().parents[1]
PARAM_FILES = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_every_parameter_file_parses(path: Path) -> None:
    params = load_params(path)
    assert isinstance(params, Params)


def test_real_profile_has_reference_scale_settings() -> None:
    params = load_params(REPO / "profiles" / "qwen2vl-2b-lora-8gpu.yaml")
    assert params.backbone.source == "Qwen/Qwen2-VL-2B-Instruct"
    assert params.train.finetune.mode in {"lora", "dora"}
    assert params.train.deepspeed.zero_stage == 2
    assert params.train.distributed.nproc_per_node == 8
    assert params.synthesize.generator.kind == "openai"
    assert {b.kind for b in params.evaluate.benchmarks} >= {"mmeb", "mbeir"}


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(data)
    return str(info.value)


def test_unknown_key_names_its_full_path() -> None:
    message = _error({"train": {"deepspeed": {"zero_stag": 2}}})
    assert "train.deepspeed.zero_stag: unknown key" in message


def test_unknown_top_level_section_is_rejected() -> None:
    assert "trian: unknown key" in _error({"trian": {}})


def test_wrong_type_names_key_path_and_value() -> None:
    message = _error({"train": {"global_batch_size": "many"}})
    assert "train.global_batch_size:" in message and "'many'" in message


def test_out_of_range_and_wrong_choice_values() -> None:
    message = _error({"train": {"deepspeed": {"zero_stage": 4}}, "validate": {"min_records": -1}})
    assert "train.deepspeed.zero_stage:" in message
    assert "validate.min_records:" in message
    assert "2 invalid parameter(s)" in message


def test_unknown_key_inside_a_tagged_source_is_rejected() -> None:
    message = _error({"images": {"source": {"kind": "scenes", "imagesize": 64}}})
    assert "images.source.scenes.imagesize: unknown key" in message


def test_unknown_source_kind_is_rejected() -> None:
    assert "images.source" in _error({"images": {"source": {"kind": "ftp"}}})


def test_cross_field_rules() -> None:
    assert "micro_batch_size" in _error({"train": {"global_batch_size": 30, "micro_batch_size": 8}})
    source = {"kind": "scenes", "min_objects": 5, "max_objects": 2}
    assert "min_objects" in _error({"images": {"source": source}})
    assert "num_heads" in _error({"backbone": {"tiny": {"hidden_size": 66}}})


def test_models_are_frozen() -> None:
    params = parse_params({})
    with pytest.raises(ValueError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 3"):
        load_params(path)


def test_missing_file_and_non_mapping_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(path)


def test_environment_references_expand_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        "train:\n  distributed:\n    nproc_per_node: ${GPUS:-8}\n"
        "synthesize:\n  generator:\n    kind: openai\n    model: m\n"
        "    endpoints: ['http://${HOST}:8000/v1']\n"
    )
    monkeypatch.delenv("GPUS", raising=False)
    monkeypatch.setenv("HOST", "127.0.0.2")
    params = load_params(path)
    assert params.train.distributed.nproc_per_node == 8
    assert params.synthesize.generator.endpoints == ("http://127.0.0.2:8000/v1",)
    monkeypatch.setenv("GPUS", "2")
    assert load_params(path).train.distributed.nproc_per_node == 2
    monkeypatch.delenv("HOST")
    with pytest.raises(ConfigError, match=r"synthesize\.generator\.endpoints\[0\]: .*HOST"):
        load_params(path)


def test_params_hash_is_stable_and_sensitive() -> None:
    a, b = parse_params({}), parse_params({})
    assert params_hash(a.images) == params_hash(b.images)
    c = parse_params({"images": {"source": {"kind": "scenes", "seed": 1}}})
    assert params_hash(a.images) != params_hash(c.images)
