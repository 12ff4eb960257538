"""Shell completion of the arguments click cannot guess: spec paths and run ids.

Enable it with ``eval "$(_OPUS_RUN_COMPLETE=bash_source opus-run)"`` (zsh: ``zsh_source``,
fish: ``fish_source``; docs/cli.md). click runs the command with ``resilient_parsing`` and
calls these callbacks for the word being completed.

They run on every Tab press, so they stay cheap and touch nothing: only click and the standard
library, the journal read through a read-only SQLite connection (opening a ``Journal`` would
create the state folder, or migrate an old journal, while a user merely pressed Tab), and
every error swallowed into "no suggestions".
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem

#: The file names a spec argument completes to (find_specs reads the same suffixes).
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
#: Run ids offered at most (newest first).
MAX_RUN_IDS = 50


def _entries(incomplete: str) -> list[str]:
    """Folders (with a trailing ``/``) and spec files that complete ``incomplete``; hidden ones
    only when the name typed so far starts with a dot."""
    head, tail = os.path.split(incomplete)
    folder = os.path.expanduser(head) if head else "."
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    out = []
    for name in names:
        if not name.startswith(tail) or (name.startswith(".") and not tail.startswith(".")):
            continue
        shown = os.path.join(head, name)
        full = os.path.join(folder, name)
        if os.path.isdir(full):
            out.append(shown + "/")
        elif name.lower().endswith(SPEC_SUFFIXES):
            out.append(shown)
    return out


def complete_spec_paths(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Spec files (.yaml, .yml, .json) and folders under what was typed.

    A single folder is completed to its own entries, so the shell puts no space after the
    folder's name (it would after a single suggestion) and the user can keep going inside it.
    """
    found = _entries(incomplete)
    if len(found) == 1 and found[0].endswith("/"):
        inside = _entries(found[0])
        if inside:
            found = inside
    return [CompletionItem(path) for path in found]


def _state_dir(ctx: click.Context) -> Path | None:
    """``--state-dir`` when it was given before the word completed, else the project's."""
    given = ctx.params.get("state_dir")
    if given:
        return Path(given)
    try:
        from ..config import default_state_dir, load_project_config

        return default_state_dir(load_project_config())
    except Exception:  # a broken opus-runner.toml: the command will say so; Tab offers nothing
        return None


def journal_run_ids(state_dir: Path) -> list[str]:
    """The run ids of the journal in ``state_dir``, newest first, without writing anything."""
    import sqlite3

    db_path = state_dir / "state.db"
    if not db_path.is_file():
        return []
    try:
        db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.5)
        try:
            rows = db.execute("SELECT run_id FROM runs ORDER BY rowid DESC LIMIT ?", (MAX_RUN_IDS,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []
    return [str(row[0]) for row in rows]


def complete_run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The journal's run ids starting with what was typed, newest first."""
    state_dir = _state_dir(ctx)
    if state_dir is None:
        return []
    return [CompletionItem(run_id) for run_id in journal_run_ids(state_dir) if run_id.startswith(incomplete)]
