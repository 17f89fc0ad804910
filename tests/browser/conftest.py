"""Browser tests: the Dagster UI in headless Chromium (the system's, never a downloaded one).

Playwright drives the Chromium found as ``$MUCO_CHROMIUM``, ``chromium``, ``chromium-browser``
or ``google-chrome``; the tests are skipped when there is none. Screenshots go to
``reports/browser/`` (``$MUCO_BROWSER_REPORTS`` to change it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from orchestration.dvc import find_dvc
from orchestration.ui import INSTANCE_TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _load_scratch_helpers() -> ModuleType:
    # The workspace and launcher helpers live beside the orchestration tests; a sibling test
    # directory cannot import them by name, so load the file once under its own name.
    if "muco_scratch" not in sys.modules:
        path = REPO_ROOT / "tests" / "orchestration" / "muco_scratch.py"
        spec = importlib.util.spec_from_file_location("muco_scratch", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["muco_scratch"] = module
        spec.loader.exec_module(module)
    return sys.modules["muco_scratch"]


scratch = _load_scratch_helpers()


def find_chromium() -> str | None:
    """The Chromium executable to drive, or None."""
    configured = os.environ.get("MUCO_CHROMIUM")
    if configured:
        return configured
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def report_dir() -> Path:
    return Path(os.environ.get("MUCO_BROWSER_REPORTS", REPO_ROOT / "reports" / "browser"))


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium under Playwright; skips the test when no Chromium is installed."""
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium executable (set MUCO_CHROMIUM, or `apt-get install chromium`); "
            "Playwright's own browser download is not used"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots() -> Path:
    """An empty ``reports/browser/`` for this test's screenshots."""
    folder = report_dir()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _quiet_instance(dagster_home: Path) -> Path:
    """The project's instance settings without the first-visit newsletter dialog (it would
    cover the buttons)."""
    config = yaml.safe_load(INSTANCE_TEMPLATE.read_text(encoding="utf-8"))
    config["nux"] = {"enabled": False}
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return dagster_home


@pytest.fixture
def ui_url(tmp_path: Path) -> Iterator[str]:
    """The Dagster UI, started by the launcher inside a scratch workspace with tiny data for the
    whole graph; stopped (and checked to leave no process behind) afterwards."""
    workspace = scratch.make_workspace(tmp_path / "workspace", whole_graph=True)
    # The workspace's orchestration/ is a copy: it finds DVC through MUCO_DVC, not .venv-dvc.
    env = {"MUCO_DVC": find_dvc(REPO_ROOT)}
    port = scratch.free_port()
    home = _quiet_instance(tmp_path / "dagster_home")
    launcher = scratch.start_ui(workspace, home, port, env=env)
    started: set[int] = set()
    try:
        scratch.wait_for_ui(port, launcher, home)
        started = scratch.descendants(launcher.pid)
        yield f"http://127.0.0.1:{port}"
    finally:
        started |= scratch.descendants(launcher.pid)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        # The launcher's last act is SIGKILL to its group: give the kernel a moment to finish.
        scratch.wait_until(lambda: not scratch.alive(started), timeout_s=10)
        left = scratch.alive(started)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes outlived the UI: {left}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    folder = report_dir()
    if folder.is_dir() and any(folder.iterdir()):
        terminalreporter.write_line(f"browser screenshots: {folder}")
