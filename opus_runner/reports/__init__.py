"""Reports of one run, from the journal: a self-contained HTML page (:mod:`.html`) and a Markdown
summary (:mod:`.markdown`), both drawn from one :class:`~.data.RunData` (:mod:`.data`).

``opus-run report`` writes them; ``opus-run run --summary-md FILE`` appends the Markdown one at
the end of a run (for ``$GITHUB_STEP_SUMMARY``).
"""

from __future__ import annotations

from .data import JobRow, RunData, load_run

__all__ = ["JobRow", "RunData", "load_run"]
