"""Start a training stage under torchrun or the DeepSpeed launcher when params ask for it.

``train.distributed.launcher`` is ``none`` (this process trains alone), ``torchrun`` or
``deepspeed``. A stage started by hand or by DVC re-executes itself through the launcher with
the same arguments; the launched processes find ``RANK`` in their environment and train.
Processes per node may come from the environment (``${MUCO_GPUS_PER_NODE}`` in a profile).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

from muco.config import DistributedConfig


def launched() -> bool:
    """True inside a process that a launcher started (it set the rank)."""
    return "RANK" in os.environ


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(cfg: DistributedConfig, module: str, args: Sequence[str]) -> list[str]:
    """The command that runs ``python -m module args`` on the configured processes."""
    if cfg.launcher == "torchrun":
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={cfg.nproc_per_node}",
            f"--nnodes={cfg.nnodes}",
        ]
        if cfg.nnodes == 1:
            command += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
        return [*command, "-m", module, *args]
    if cfg.launcher == "deepspeed":
        command = [sys.executable, "-m", "deepspeed.launcher.runner"]
        if cfg.hostfile is not None:
            command += ["--hostfile", str(cfg.hostfile)]
        else:
            command += ["--num_nodes", str(cfg.nnodes)]
        command += ["--num_gpus", str(cfg.nproc_per_node), "--module", module]
        return [*command, *args]
    raise ValueError(f"train.distributed.launcher {cfg.launcher!r} starts no processes")


def relaunch(cfg: DistributedConfig, module: str, args: Sequence[str]) -> int | None:
    """Re-execute under the configured launcher and return its exit code; None to train here."""
    if cfg.launcher == "none" or launched():
        return None
    return subprocess.run(launcher_command(cfg, module, args), check=False).returncode
