"""The DVC resource: Dagster runs DVC stages, DVC decides what is stale (DESIGN.md rule 3).

DVC lives in its own tool environment (its antlr4 pin breaks Dagster's selection parser), so
the resource finds the executable rather than importing ``dvc``: ``$MUCO_DVC``, then
``.venv-dvc/bin/dvc`` in the workspace or in this checkout, then ``dvc`` on ``PATH``.

With ``MUCO_DVC_PUSH=1`` every successful ``dvc repro`` is followed by ``dvc push`` of the
stage's outputs to the default DVC remote, so a materialised asset is also stored remotely.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from dagster import ConfigurableResource
from pydantic import Field

from orchestration.stages import stage_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
PUSH_ENV = "MUCO_DVC_PUSH"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class DvcError(RuntimeError):
    """A DVC command failed; the message carries the command and the tail of its output."""


def find_dvc(repo_root: Path) -> str:
    """Path of the DVC executable for ``repo_root``; a clear error when there is none."""
    candidates = [
        os.environ.get("MUCO_DVC"),
        str(repo_root / ".venv-dvc" / "bin" / "dvc"),
        str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("dvc")
    if on_path:
        return on_path
    raise DvcError(
        "DVC not found: set MUCO_DVC, or run `make install` to create .venv-dvc, or put dvc on PATH"
    )


def push_requested() -> bool:
    """Whether ``$MUCO_DVC_PUSH`` asks for pushes; any value but a yes or a no is an error."""
    value = os.environ.get(PUSH_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DvcError(f"{PUSH_ENV}={os.environ[PUSH_ENV]!r}: expected 1/true/yes/on or 0/false/no/off")


class DvcResource(ConfigurableResource):
    """Runs ``dvc`` in the project workspace and reads what ``dvc.lock`` recorded."""

    repo_root: str = Field(default=str(REPO_ROOT), description="the DVC/git workspace")
    executable: str | None = Field(
        default=None, description="dvc executable; found automatically when unset"
    )

    @property
    def root(self) -> Path:
        return Path(self.repo_root)

    def run(self, args: list[str], log: Callable[[str], None]) -> None:
        """Run ``dvc ARGS`` streaming each output line to ``log``; raise :class:`DvcError`.

        Runs touching the workspace are serialised by a file lock, so two Dagster runs never
        race for DVC's own repository lock (which would fail the second run instead of queueing).
        Stage commands call ``python``: the interpreter running Dagster comes first on ``PATH``.
        """
        command = [self.executable or find_dvc(self.root), *args]
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        tail: list[str] = []
        with self._workspace_lock():
            process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                if line:
                    log(line)
                    tail = [*tail[-39:], line]
            returncode = process.wait()
        if returncode:
            output = "\n".join(tail)
            raise DvcError(f"`{' '.join(command)}` exited with {returncode}:\n{output}")

    def repro(self, stage: str, log: Callable[[str], None]) -> None:
        """``dvc repro --single-item STAGE``: run the stage if its inputs changed.

        When ``$MUCO_DVC_PUSH`` is set, ``dvc push STAGE`` follows a successful repro (also one
        that found nothing changed: the outputs may not have reached the remote yet). A failed
        push fails the step: the user asked for the data to be stored remotely.
        """
        pushes = push_requested()  # a bad value fails before the stage runs, not after
        self.run(["repro", "--single-item", stage], log)
        if pushes:
            self.run(["push", stage], log)

    def lock_entry(self, stage: str) -> dict[str, Any]:
        """The stage's entry in ``dvc.lock``; a clear error when the stage has never run."""
        lock_path = self.root / "dvc.lock"
        if not lock_path.exists():
            raise DvcError(f"{lock_path} does not exist: stage {stage!r} has not run")
        stages = (yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}).get("stages", {})
        if stage not in stages:
            raise DvcError(f"{lock_path} has no entry for stage {stage!r}")
        return stages[stage]

    def data_version(self, stage: str) -> str:
        """The content hash DVC recorded for the stage's data outputs.

        Only the ``outs`` of ``dvc.yaml`` count, not ``metrics`` (which ``dvc.lock`` lists among
        the outputs too, but whose timings change on every run). One output: its md5 exactly as
        ``dvc.lock`` has it. Several: a sha256 over ``path:md5`` pairs in path order.
        """
        declared = {_out_path(out) for out in stage_spec(self.root, stage).get("outs", [])}
        recorded = {out["path"]: out["md5"] for out in self.lock_entry(stage).get("outs", [])}
        missing = sorted(declared - recorded.keys())
        if not declared or missing:
            raise DvcError(f"dvc.lock records no hash for stage {stage!r} outputs {missing}")
        outs = sorted((path, recorded[path]) for path in declared)
        if len(outs) == 1:
            return outs[0][1]
        joined = "\n".join(f"{path}:{md5}" for path, md5 in outs)
        return hashlib.sha256(joined.encode()).hexdigest()

    def read_json(self, relative_path: str) -> dict[str, Any]:
        """A JSON file in the workspace, such as a stage's metrics."""
        return json.loads((self.root / relative_path).read_text(encoding="utf-8"))

    @contextmanager
    def _workspace_lock(self) -> Iterator[None]:
        lock_dir = self.root / ".dvc" / "tmp"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / "muco-workspace.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _out_path(out: str | dict[str, Any]) -> str:
    # dvc.yaml lists an output as a path, or as a one-key mapping {path: options}.
    return out if isinstance(out, str) else next(iter(out))
