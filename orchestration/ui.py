"""Start the Dagster UI (``dagster dev``) so that Ctrl-C, SIGTERM and SIGHUP stop all of it.

``python -m orchestration.ui [--host H] [--port P] [--grace S] [dagster dev options...]``
(``make ui``) runs ``dagster dev`` in a process group of its own, turns the first SIGINT,
SIGTERM or SIGHUP into one SIGINT for ``dagster dev`` (its orderly shutdown of the webserver,
daemon and code servers), and kills the whole group once that is done or after ``--grace``
seconds, whichever comes first. A second signal kills the group at once.

Why a launcher is needed: ``dagster dev`` maps SIGTERM onto whatever SIGINT does. A process
started in the background by a non-interactive shell (``make ui &``, ``nohup``, a CI step, an
editor's task runner) inherits SIGINT as *ignored*, so Python installs no KeyboardInterrupt
handler and ``dagster dev`` ignores SIGTERM too: only SIGKILL stops it, and SIGKILL leaves the
webserver, the daemon and the code servers running with the port taken. Here SIGINT and SIGTERM
are caught, so ``dagster dev`` starts with both at their defaults; and since the launcher owns
the process group, whatever ``dagster dev`` leaves behind (a run worker, a code server that
missed its heartbeat) goes with the group.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

INSTANCE_TEMPLATE = Path(__file__).resolve().parent / "dagster.yaml"
# dagster dev waits up to 60 s for each of its services; on a 2-core machine they all stop
# within a few seconds, so a service still alive after this is hung and gets killed.
DEFAULT_GRACE_S = 20.0
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


class _Signals:
    """What the handler saw: how many stop signals, and when the first one came."""

    def __init__(self) -> None:
        self.count = 0
        self.first_at = 0.0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.first_at = time.monotonic()

    def install(self) -> None:
        """Catch SIGINT, SIGTERM and SIGHUP (unless SIGHUP is ignored, as under nohup).

        Installing a handler before ``dagster dev`` starts also means the child begins with
        these signals at their defaults (exec resets caught signals, but not ignored ones).
        """
        signals = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            signals.append(signal.SIGHUP)
        for signum in signals:
            signal.signal(signum, self.handle)


def _die_with(launcher_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when the launcher dies, even by SIGKILL.

    Linux only; elsewhere a launcher killed outright leaves the group to be stopped by hand.
    """

    def preexec() -> None:
        if not sys.platform.startswith("linux"):
            return
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher_pid:  # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the child unreaped: while it is a zombie its pid, the group's id, cannot be
    # reused, so killing the group afterwards can only hit processes this launcher started.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def ensure_instance(dagster_home: Path) -> None:
    """Give a new ``$DAGSTER_HOME`` the project's instance settings (the DVC pool limit)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)


def supervise(command: Sequence[str], grace_s: float) -> int:
    """Run ``command`` in its own process group until it exits or a signal stops it.

    Returns its exit status, or 128 + signal number when it ended by a signal; the group is
    killed in every case, so nothing it started outlives the launcher.
    """
    signals = _Signals()
    signals.install()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=_die_with(os.getpid()),
    )
    forwarded = False
    try:
        while not _has_exited(process.pid):
            if signals.count > 1 or (
                signals.count and time.monotonic() - signals.first_at > grace_s
            ):
                break
            if signals.count and not forwarded:
                # One SIGINT to dagster dev alone: it stops its own services in order.
                os.kill(process.pid, signal.SIGINT)
                forwarded = True
            time.sleep(_POLL_S)
    finally:
        # The leader is not reaped yet, so the group still exists and this cannot miss.
        os.killpg(process.pid, signal.SIGKILL)
    returncode = process.wait()
    return returncode if returncode >= 0 else 128 - returncode


def dagster_dev_command(host: str, port: int, extra: Sequence[str]) -> list[str]:
    """``dagster dev`` from this interpreter's environment; the code location comes from
    ``[tool.dagster]`` in ``pyproject.toml`` unless ``extra`` names one."""
    return [sys.executable, "-m", "dagster", "dev", "--host", host, "--port", str(port), *extra]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.ui",
        description="dagster dev that stops completely on Ctrl-C, SIGTERM or SIGHUP; "
        "other options go to dagster dev.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds dagster dev gets to stop its services before the group is killed",
    )
    args, extra = parser.parse_known_args(argv)
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path.cwd() / ".dagster")))
    ensure_instance(home)
    return supervise(dagster_dev_command(args.host, args.port, extra), args.grace)


if __name__ == "__main__":
    sys.exit(main())
