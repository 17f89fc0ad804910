"""Test helpers: scratch DVC workspaces (this repository's code and stage graph with tiny data),
the Dagster UI launcher run on them, and a view of the processes it starts.

A plain module rather than a conftest so tests import it by name: pytest puts this directory on
``sys.path`` for ``tests/orchestration``, and ``tests/browser/conftest.py`` loads it by path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# Copied beside muco/ and orchestration/: the stage graph, and pyproject.toml for its Dagster
# code location (``dagster dev`` run inside the workspace then drives DVC there).
WORKSPACE_FILES = ("dvc.yaml", ".dvcignore", "pyproject.toml")
SCRATCH_GITIGNORE = "__pycache__/\n*.pyc\n/.cache/\n/checkpoints/\n"


def tiny_params(*, whole_graph: bool) -> dict[str, Any]:
    """``params.yaml`` with only the sizes changed: every key dvc.yaml names stays.

    ``whole_graph`` also shrinks the backbone, its vision and language pretraining and training
    so the graph runs end to end in about a minute on two cores (8 records pass the gate, two
    training steps).
    """
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["images"]["source"] = TINY_SCENES
    params["images"]["preview_count"] = 4
    if whole_graph:
        params["validate"]["min_records"] = 8
        params["backbone"]["tiny"].update(hidden_size=32, num_layers=1, vocab_size=512)
        params["backbone"]["tiny"]["pretrain_vision"].update(steps=2, batch_size=4)
        params["backbone"]["tiny"]["pretrain_language"].update(steps=2, batch_size=2)
        params["train"].update(
            global_batch_size=8, micro_batch_size=4, max_steps=2, warmup_steps=0, log_every_steps=1
        )
    return params


def make_workspace(workspace: Path, *, git: bool = False, whole_graph: bool = False) -> Path:
    """A DVC project holding copies of ``muco/``, ``orchestration/`` and the stage graph.

    With ``git`` it is also a git repository with everything committed (``dvc exp run``
    needs a commit to start from); without, it is a ``dvc init --no-scm`` project.
    """
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("muco", "orchestration"):
        shutil.copytree(REPO_ROOT / package, workspace / package, ignore=ignore)
    for name in WORKSPACE_FILES:
        shutil.copy(REPO_ROOT / name, workspace / name)
    (workspace / "params.yaml").write_text(yaml.safe_dump(tiny_params(whole_graph=whole_graph)))
    if not git:
        _run([find_dvc(REPO_ROOT), "init", "--no-scm", "-q"], workspace)
        return workspace
    (workspace / ".gitignore").write_text(SCRATCH_GITIGNORE)
    _run(["git", "-c", "init.defaultBranch=main", "init", "-q"], workspace)
    _run(["git", "config", "user.email", "tests@muco.invalid"], workspace)
    _run(["git", "config", "user.name", "muco tests"], workspace)
    _run([find_dvc(REPO_ROOT), "init", "-q"], workspace)
    _run(["git", "add", "-A"], workspace)
    _run(["git", "commit", "-q", "-m", "scratch workspace"], workspace)
    return workspace


def _run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)


def run_dvc(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dvc ARGS`` in ``workspace`` as the Dagster resource runs it (project ``python`` first on
    ``PATH``); fails the test with DVC's output on a non-zero exit."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run(
        [find_dvc(REPO_ROOT), *args], cwd=workspace, env=env, capture_output=True, text=True
    )
    if result.returncode:
        pytest.fail(
            f"dvc {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


# --- the UI launcher and its processes ---------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``port`` now (with SO_REUSEADDR, as uvicorn binds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_ui(
    cwd: Path,
    dagster_home: Path,
    port: int,
    *,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m orchestration.ui`` in ``cwd``, as the leader of a new session (so a test can
    send it a terminal's Ctrl-C: SIGINT to its process group); its output goes to
    :func:`ui_log`."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    with ui_log(dagster_home).open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestration.ui", "--port", str(port)],
            cwd=cwd,
            env={**os.environ, **(env or {}), "DAGSTER_HOME": str(dagster_home)},
            start_new_session=True,
            preexec_fn=preexec_fn,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def ui_log(dagster_home: Path) -> Path:
    """Where :func:`start_ui` writes the UI's output."""
    return dagster_home / "ui.log"


def wait_for_ui(
    port: int, launcher: subprocess.Popen[bytes], dagster_home: Path, timeout_s: float = 180
) -> None:
    """Poll ``/server_info`` until the webserver answers; fail with the UI's output if the
    launcher exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while launcher.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    output = ui_log(dagster_home).read_text(errors="replace")[-4000:]
    pytest.fail(f"the UI did not serve on port {port} (launcher: {launcher.poll()}):\n{output}")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    zombie: bool


def process_table() -> dict[int, Proc]:
    """Every process, from psutil when installed, else from ``/proc``."""
    try:
        import psutil
    except ImportError:
        return _proc_table()
    return {
        proc.pid: Proc(proc.pid, proc.info["ppid"], proc.info["status"] == psutil.STATUS_ZOMBIE)
        for proc in psutil.process_iter(["ppid", "status"])
    }


def _proc_table() -> dict[int, Proc]:
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(stat.parent.name)
        table[pid] = Proc(pid, int(fields[1]), fields[0] == "Z")
    return table


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    table = process_table()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p.pid for p in table.values() if p.ppid in frontier and not p.zombie}
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run: a zombie has ended, it is only not reaped yet (orphans
    here are re-parented to an init that may never reap them)."""
    table = process_table()
    return {pid for pid in pids if pid in table and not table[pid].zombie}


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
