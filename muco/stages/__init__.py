"""One thin ``main()`` per DVC stage: parse params, call the library, write outputs, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from muco.config import ConfigError

EXIT_BAD_INPUT = 2


def run_stage(
    description: str,
    configure: Callable[[argparse.ArgumentParser], None],
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
    prog: str,
) -> int:
    """Parse ``argv`` and run ``body``; bad params or missing inputs exit 2 with one clear line.

    A traceback helps nobody whose only mistake was a typo in ``params.yaml`` or a missing file;
    anything else is a bug and keeps its traceback.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--params", default="params.yaml", help="parameter file (params.yaml)")
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return body(args)
    except (ConfigError, FileNotFoundError, NotADirectoryError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
