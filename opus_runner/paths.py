"""Paths as users think of them, for messages, and the one rule confining a spec's paths to its project."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import SpecError


@functools.lru_cache(maxsize=512)
def _display(path: str, cwd: str) -> str:
    if path == cwd or path.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, cwd)
    return path


def display_path(path: str | Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute.

    Cached per (path, current folder): error messages and per-job contexts ask for it often.
    """
    return _display(os.path.abspath(path), os.getcwd())


# -- confinement ------------------------------------------------------------------------------

#: Marks a property of an output's config schema as a path (``{"type": "string", PATH_KEYWORD:
#: True}``): a value that is not a template is then confined before anything is submitted.
PATH_KEYWORD = "x-opus-path"

#: How to fix a refused path; every confinement message ends with it.
CONFINEMENT_HINT = "use a path inside the project, or pass --allow-outside-root"


class OutsideRoot(SpecError):
    """A path a spec reads or writes resolves outside the project root (exit 2)."""

    def under(self, *prefix: str | int, file: str | None = None, line: int | None = None) -> OutsideRoot:
        """The same refusal located in the spec: ``key`` prefixed (``outputs[0]`` + ``path``)."""
        return OutsideRoot(self.message, file=file or self.file, key=(*prefix, *self.key), line=line or self.line)


def outside_root(path: Path, root: Path) -> str | None:
    """Why ``path`` may not be used (it resolves outside ``root``, symlinks followed), or None.

    Both are resolved first, so neither ``..`` nor a symlink inside the project can lead out.
    """
    real = path.resolve()
    top = root.resolve()
    if real.is_relative_to(top):
        return None
    plain = Path(os.path.normpath(path))
    via = f" (through a symlink to {real})" if real != plain else ""
    return f"{display_path(plain)} lies outside the project root {top}{via}; {CONFINEMENT_HINT}"


def confine(
    path: Path,
    *,
    root: Path,
    allow_outside_root: bool = False,
    label: str = "",
    file: str | Path | None = None,
    key: Sequence[str | int] = (),
    line: int | None = None,
) -> Path:
    """Return ``path`` if it lies inside ``root`` (or ``allow_outside_root``); raise :class:`OutsideRoot`.

    The one rule for every path a spec makes the runner read or write: file inputs, foreach
    data, ``--vars-file``, output files and download folders. Call it after templating, with the
    path as it will be opened. ``label`` starts the message (``"--vars-file"``) when no spec
    key names the path.
    """
    if allow_outside_root:
        return path
    problem = outside_root(path, root)
    if problem is not None:
        raise OutsideRoot(f"{label} {problem}" if label else problem, file=file, key=key, line=line)
    return path


def project_root_of(ctx: Any) -> Path:
    """The project root a handler's ``ctx`` is confined to: ``ctx.root`` as the runner set it,
    else the root of the spec's folder (handlers called outside a run)."""
    if getattr(ctx, "root", None) is not None:
        return Path(ctx.root)
    from .config import load_project_config

    return load_project_config(ctx.spec_dir).repo_root


def resolve_spec_path(value: str | Path, ctx: Any, *, key: str | Sequence[str | int] = "path") -> Path:
    """``value`` as the path an output writes: relative ones against the spec's folder, and
    confined to the project root unless the run has ``--allow-outside-root``.

    ``key`` is the entry's key holding the path (``"path"``, ``"dir"``); the runner adds where
    the entry sits (``outputs[0]``) when it reports the refusal.
    """
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(ctx.spec_dir) / path
    keys = (key,) if isinstance(key, str) else tuple(key)
    return confine(
        path,
        root=project_root_of(ctx),
        allow_outside_root=bool(getattr(ctx, "allow_outside_root", False)),
        key=keys,
    )
