"""Write ``docs/cli.md``, the CLI reference, from the click commands of ``opus-run``.

A development tool, not part of the package: ``python tools/gen_cli_docs.py`` rewrites
``docs/cli.md`` of this checkout, ``python tools/gen_cli_docs.py -`` prints it, and
tests/test_docs.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from opus_runner.authoring import _one_line
from opus_runner.cli import main as opus_run
from opus_runner.errors import EXIT_CODES

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

_COMPLETION = """\
## Shell completion

`opus-run` completes commands, options, spec paths (`.yaml`, `.yml` and `.json` files and
folders, for `opus-run SPEC...`, `run`, `validate`, `render`, `lock` and `drift`) and run ids
from the journal (`resume`, `report`; newest first, from `--state-dir` when it comes first) in
bash, zsh and fish (click's shell completion). Generate the script once and source it from your
shell's start-up file:

```bash
# bash (needs bash 4.4 or newer): add to ~/.bashrc
eval "$(_OPUS_RUN_COMPLETE=bash_source opus-run)"
# or, faster at start-up, save the script and source the file
_OPUS_RUN_COMPLETE=bash_source opus-run > ~/.opus-run-complete.bash
echo '. ~/.opus-run-complete.bash' >> ~/.bashrc
```

```zsh
# zsh: add to ~/.zshrc
eval "$(_OPUS_RUN_COMPLETE=zsh_source opus-run)"
```

```fish
# fish: save it where fish loads completions from
_OPUS_RUN_COMPLETE=fish_source opus-run > ~/.config/fish/completions/opus-run.fish
```
"""


def _paragraphs(text: str) -> list[str]:
    """Markdown for a click help text: ``\\b`` blocks stay verbatim, other paragraphs re-flow."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text or "")):
        if block.startswith("\b"):
            body = block[1:].strip("\n")
            out.append("```\n" + body + "\n```")
        elif block.strip():
            out.append(_one_line(block))
    return out


def _metavar(param: Any) -> str:
    if getattr(param, "is_flag", False) and not getattr(param, "metavar", None):
        return ""
    if param.metavar:
        return str(param.metavar)
    kind = param.type
    if isinstance(kind, click.Choice):
        return "|".join(map(str, kind.choices))
    if isinstance(kind, click.Path):
        return "DIR" if not kind.file_okay else "FILE" if not kind.dir_okay else "PATH"
    if isinstance(kind, click.IntRange):
        low = "" if kind.min is None else str(kind.min)
        high = "" if kind.max is None else str(kind.max)
        return f"INTEGER ({low}..{high})"
    return str(kind.name).upper()


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _option_rows(command: Any) -> list[str]:
    rows = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
        help_text = param.help or ""
        if param.show_default and param.default not in (None, False, ()):
            help_text += f" [default: {param.default}]"
        if param.multiple and "repeatable" not in help_text:
            help_text += " (repeatable)"
        rows.append(f"| {names} | {_cell(_metavar(param))} | {_cell(help_text)} |")
    return rows


def _exit_code_section() -> list[str]:
    """The exit-code table, from ``opus_runner.errors.EXIT_CODES`` (the one place codes are defined)."""
    rows = [f"| `{row.code.replace(' / ', '` / `')}` | {_cell(row.meaning)} | {_cell(row.names())} |" for row in EXIT_CODES]
    return [
        "## Exit codes",
        "",
        "The same table holds for every command; a command exits only with the codes of the rows that",
        "name it. With `--format json`, a command that fails prints an `error` event carrying the same",
        "`exit_code` and message as its last line (see [events.md](events.md)).",
        "",
        "| code | meaning | commands |",
        "|---|---|---|",
        *rows,
        "",
    ]


def cli_reference_markdown() -> str:
    """The CLI reference (``docs/cli.md``), generated from the click commands.

    Deterministic (no terminal width involved), so a test can compare it with the committed
    file; regenerate with ``python tools/gen_cli_docs.py``.
    """
    root = click.Context(opus_run, info_name="opus-run")
    names = [n for n in opus_run.list_commands(root) if not opus_run.get_command(root, n).hidden]  # type: ignore[union-attr]
    lines = [
        "# `opus-run` command reference",
        "",
        "<!-- Generated from the click commands by `python tools/gen_cli_docs.py`; do not edit by hand. -->",
        "",
        *[p + "\n" for p in _paragraphs(opus_run.help or "")],
        "Every command takes `-h`/`--help`; `opus-run --version` prints the version. Every command exits",
        "with a code of the [exit-code table](#exit-codes) below.",
        "",
        "For a checkout you do not trust (a pull request), add `--untrusted`: no file of the checkout is",
        "imported as a plugin (the plugins folder, `plugins_dir`, a `--plugin` a resumed run's journal names)",
        "and the key goes nowhere the checkout says (`base_url` of `opus-runner.toml`, a `--base-url` in the",
        "journal); the first line printed says what was ignored. Without it, a `base_url` from the project",
        "file that is not the Opus service is named in the first line printed. See [ci.md](ci.md).",
        "",
        "Text output shows what the server sends (errors, statuses, names, output values) without terminal",
        "control characters: escape sequences are removed, other controls shown escaped (`\\x07`), and a",
        "newline inside a one-line value shown as `\\n`. `--format json` carries the server's text exactly.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    commands = []
    for name in names:
        command = opus_run.get_command(root, name)
        assert command is not None
        commands.append((name, command))
        summary = command.get_short_help_str(limit=300)
        lines.append(f"| [`{name}`](#opus-run-{name}) | {_cell(summary)} |")
    lines += ["", *_exit_code_section()]
    for name, command in commands:
        ctx = click.Context(command, info_name=name, parent=root)
        usage = " ".join(["opus-run", name, *command.collect_usage_pieces(ctx)])
        lines += [f"## opus-run {name}", "", "```", usage, "```", ""]
        for paragraph in _paragraphs(command.help or ""):
            lines += [paragraph, ""]
        rows = _option_rows(command)
        if rows:
            lines += ["| option | value | description |", "|---|---|---|", *rows, ""]
    lines.append(_COMPLETION)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python tools/gen_cli_docs.py [PATH | -]``: write the CLI reference (default docs/cli.md)."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = cli_reference_markdown()
    if args and args[0] == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args[0]) if args else DEFAULT_PATH
    if not target.parent.is_dir():
        sys.stderr.write(f"error: folder {target.parent} does not exist; pass the path of cli.md, or - for stdout\n")
        return 2
    target.write_text(text, encoding="utf-8")
    sys.stderr.write(f"wrote {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
