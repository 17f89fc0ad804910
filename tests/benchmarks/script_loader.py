"""Loads benchmark scripts by path (benchmarks/ is not a package); imported by name by the
tests beside it, which pytest puts on sys.path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


@contextmanager
def load_script(path: Path) -> Iterator[ModuleType]:
    """The script at ``path`` as a module, registered in ``sys.modules`` while in use."""
    name = f"benchmarks_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses resolve their annotations through sys.modules while the module executes.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]
