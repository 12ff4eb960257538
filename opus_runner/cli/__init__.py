"""The ``opus-run`` command line: parses arguments, calls the runner, prints, maps exit codes.

No logic lives here. One module per group of commands (:mod:`.run`, :mod:`.jobs`,
:mod:`.authoring`, :mod:`.plugins`, :mod:`.sandbox`), the options they share in :mod:`.options`,
errors to exit codes in :mod:`.console`, and the group in :mod:`.app`. The group is named
``app`` rather than ``main`` so that ``opus_runner.cli.main``, the click group re-exported
here, does not shadow a submodule of the same name.
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
