"""The ``opus-run`` command line: parses arguments, calls the runner, prints, maps exit codes.

No logic lives here. One module per group of commands (:mod:`.run`, :mod:`.jobs`,
:mod:`.authoring`, :mod:`.plugins`, :mod:`.sandbox`), the options they share in :mod:`.options`,
errors to exit codes in :mod:`.console`, and the group in :mod:`.app`. The group is named
``app`` rather than ``main`` so that ``opus_runner.cli.main``, the click group re-exported
here, does not shadow a submodule of the same name.
"""

from __future__ import annotations

import sys

from .app import main

__all__ = ["main", "run"]


def run() -> None:
    """The ``opus-run`` program: :data:`main`, then the process's end.

    When a command ran Temporal's client or worker (the engine commands), the process ends with
    ``os._exit`` once its output is flushed: the SDK's runtime threads outlive the event loop,
    and one calling into Python while the interpreter tears down aborts the process (SIGABRT,
    "PyGILState_Release: thread state ... must be current", temporalio/sdk-python#300) after
    the command has done its work and chosen its exit code.
    """
    code: object = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if "temporalio.bridge.runtime" not in sys.modules and "temporalio.bridge.temporal_sdk_bridge" not in sys.modules:
        sys.exit(code)
    import os

    if isinstance(code, str):  # what sys.exit would print
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))  # noqa: SLF001
