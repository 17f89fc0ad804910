"""``python -m orchestration.ui`` (``make ui``) stops the whole Dagster UI on a signal."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest
from muco_scratch import (
    REPO_ROOT,
    alive,
    descendants,
    free_port,
    port_is_free,
    start_ui,
    wait_for_ui,
    wait_until,
)

from orchestration.ui import dagster_dev_command, ensure_instance

# dagster dev stops its services in 2-5 s on two cores; the launcher's own limit is 20 s.
STOP_DEADLINE_S = 30


def _ignore_sigint() -> None:
    # What a non-interactive shell does to a background job (`make ui &`, nohup, CI): the
    # condition under which plain `dagster dev` ignored SIGTERM too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _sigterm(launcher: Popen[bytes]) -> None:
    launcher.send_signal(signal.SIGTERM)


def _ctrl_c(launcher: Popen[bytes]) -> None:
    # A terminal sends SIGINT to its foreground process group: the launcher's, not dagster's.
    os.killpg(launcher.pid, signal.SIGINT)


def _launcher_killed(launcher: Popen[bytes]) -> None:
    launcher.kill()


@pytest.mark.parametrize(
    ("stop", "preexec_fn"),
    [
        pytest.param(_sigterm, _ignore_sigint, id="sigterm-background-start"),
        pytest.param(_ctrl_c, None, id="ctrl-c"),
        pytest.param(
            _launcher_killed,
            None,
            id="launcher-sigkilled",
            marks=pytest.mark.skipif(
                not sys.platform.startswith("linux"), reason="parent-death signal is Linux only"
            ),
        ),
    ],
)
def test_ui_stops_with_every_process_it_started(
    tmp_path: Path,
    stop: Callable[[Popen[bytes]], None],
    preexec_fn: Callable[[], None] | None,
) -> None:
    port = free_port()
    home = tmp_path / "dagster_home"
    launcher = start_ui(REPO_ROOT, home, port, preexec_fn=preexec_fn)
    started: set[int] = set()
    try:
        wait_for_ui(port, launcher, home)
        started = descendants(launcher.pid)
        # dagster dev, its webserver and daemon, a code server and its gRPC server
        assert len(started) >= 5, started
        began = time.monotonic()
        stop(launcher)
        gone = wait_until(lambda: not alive(started | {launcher.pid}), STOP_DEADLINE_S)
        elapsed = time.monotonic() - began
        assert gone, f"still running {elapsed:.1f} s after the signal: {alive(started)}"
        assert port_is_free(port)
        if stop is not _launcher_killed:
            assert launcher.wait(timeout=1) == 0
    finally:
        for pid in alive(started | {launcher.pid}):
            os.kill(pid, signal.SIGKILL)
        launcher.wait()


def test_dagster_dev_gets_the_address_and_extra_options() -> None:
    command = dagster_dev_command("127.0.0.1", 3123, ["-m", "orchestration.definitions"])
    assert command == [
        sys.executable,
        *("-m", "dagster", "dev", "--host", "127.0.0.1", "--port", "3123"),
        *("-m", "orchestration.definitions"),
    ]


def test_a_new_instance_gets_the_project_settings_and_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    ensure_instance(home)
    assert (home / "dagster.yaml").read_text() == (
        REPO_ROOT / "orchestration" / "dagster.yaml"
    ).read_text()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    ensure_instance(home)
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
