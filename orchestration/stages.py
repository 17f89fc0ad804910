"""Read the DVC stage graph (``dvc.yaml``) so Dagster never re-declares what DVC knows."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml


def stage_spec(repo_root: Path, stage: str) -> dict[str, Any]:
    """The ``dvc.yaml`` entry of ``stage``; ``KeyError`` naming the stage when it is absent."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in stages:
        raise KeyError(f"dvc.yaml has no stage {stage!r} (stages: {', '.join(stages)})")
    return stages[stage]


def stage_code_version(repo_root: Path, stage: str) -> str:
    """sha256 over the stage's command and the files of its ``deps`` (byte-code excluded).

    Dagster's code version then changes exactly when DVC would consider the stage's code
    changed, and the UI can flag materialisations made by older code.
    """
    spec = stage_spec(repo_root, stage)
    digest = hashlib.sha256(spec["cmd"].encode())
    for dep in sorted(spec.get("deps", [])):
        path = repo_root / dep
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(repo_root).as_posix().encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
