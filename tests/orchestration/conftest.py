"""A scratch DVC workspace: this repository's code and stage graph with a tiny scene pool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestration.dvc import find_dvc

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_SCENES = {
    "kind": "scenes",
    "seed": 0,
    "image_size": 56,
    "counts": {"train": 8, "test": 2, "test_unseen": 2},
}


@pytest.fixture
def dvc_workspace(tmp_path: Path) -> Path:
    """A DVC project (no git) holding a copy of ``muco/``, ``dvc.yaml`` and small params."""
    workspace = tmp_path / "workspace"
    shutil.copytree(
        REPO_ROOT / "muco", workspace / "muco", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, workspace / name)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    # Only the sizes change: every key that dvc.yaml names must stay in params.yaml.
    params["images"]["source"] = TINY_SCENES
    params["images"]["preview_count"] = 4
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([find_dvc(REPO_ROOT), "init", "--no-scm", "-q"], cwd=workspace, check=True)
    return workspace
