"""Read the DVC stage graph (``dvc.yaml``) so Dagster never re-declares what DVC knows."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml


def stage_graph(repo_root: Path) -> dict[str, set[str]]:
    """Each stage of ``dvc.yaml`` and the stages whose outputs it depends on.

    A dependency on a path inside (or equal to) another stage's output counts, as DVC counts it.
    """
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    producers = {
        _out_path(out): name for name, spec in stages.items() for out in spec.get("outs", [])
    }
    graph = {}
    for name, spec in stages.items():
        graph[name] = {
            producer
            for dep in spec.get("deps", [])
            for out, producer in producers.items()
            if Path(dep) == Path(out) or Path(out) in Path(dep).parents
        }
    return graph


def _out_path(out: str | dict[str, Any]) -> str:
    # An out is a path, or a one-key mapping from the path to its options (cache: false ...).
    return out if isinstance(out, str) else next(iter(out))


def stage_spec(repo_root: Path, stage: str) -> dict[str, Any]:
    """The ``dvc.yaml`` entry of ``stage``; ``KeyError`` naming the stage when it is absent."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in stages:
        raise KeyError(f"dvc.yaml has no stage {stage!r} (stages: {', '.join(stages)})")
    return stages[stage]


def stage_code_version(repo_root: Path, stage: str) -> str:
    """sha256 over the stage's command and the files of its code ``deps`` (byte-code excluded).

    Dependencies that are another stage's outputs (data, models) are data, not code: their
    content is the upstream asset's data version. So the code version changes exactly when the
    stage's own code or command changes, and the UI flags materialisations made by older code
    without reading gigabytes of data each time the code location loads.
    """
    spec = stage_spec(repo_root, stage)
    produced = [Path(out) for out in _all_outs(repo_root)]
    digest = hashlib.sha256(spec["cmd"].encode())
    for dep in sorted(spec.get("deps", [])):
        if any(Path(dep) == out or out in Path(dep).parents for out in produced):
            continue
        path = repo_root / dep
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(repo_root).as_posix().encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _all_outs(repo_root: Path) -> list[str]:
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return [_out_path(out) for spec in stages.values() for out in spec.get("outs", [])]
