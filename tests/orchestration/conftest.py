"""Fixtures: scratch DVC workspaces with a tiny scene pool (built by ``muco_scratch``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from muco_scratch import make_workspace


@pytest.fixture
def dvc_workspace(tmp_path: Path) -> Path:
    """A DVC project (no git) with the tiny scene pool."""
    return make_workspace(tmp_path / "workspace")


@pytest.fixture
def dvc_git_workspace(tmp_path: Path) -> Path:
    """A git + DVC project with the tiny scene pool, everything committed."""
    return make_workspace(tmp_path / "workspace", git=True)
