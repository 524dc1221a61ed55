"""MkDocs hooks: the reference pages are written from the code itself, so they cannot drift from it.

A page marks where generated text goes with a line ``<!-- generated: NAME -->``:

- ``cli``: every ``fedmeta`` command with its arguments and options (defaults and help), read from the
  click commands Typer builds for them;
- ``run-settings``: every run setting of `fedmeta.common.run_settings`, with its default, its help and
  the components that read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import click
import typer

from fedmeta.common.run_settings import RUN_SETTINGS
from fedmeta.simulations.cli import app


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(parameter: click.Parameter) -> str:
    if parameter.required:
        return "required"
    default = parameter.default
    if default is None or default == () or callable(default):
        return ""
    if isinstance(parameter, click.Option) and parameter.is_flag and parameter.secondary_opts:
        return parameter.opts[0] if default else parameter.secondary_opts[0]
    return '`""`' if default == "" else f"`{default}`"


def _rows(command: click.Command, context: click.Context) -> Iterator[str]:
    for parameter in command.get_params(context):
        if (isinstance(parameter, click.Option) and parameter.hidden) or parameter.name == "help":
            continue
        names = " / ".join([*parameter.opts, *parameter.secondary_opts]) if isinstance(parameter, click.Option) \
            else parameter.human_readable_name
        help_text = getattr(parameter, "help", None) or ""
        yield f"| `{names}` | {_cell(parameter.type.name)} | {_default(parameter)} | {_cell(help_text)} |"


def _command(command: click.Command, path: str, parent: click.Context) -> Iterator[str]:
    context = click.Context(command, info_name=path.split()[-1], parent=parent)
    yield f"## `{path}`"
    yield ""
    if command.help:
        yield " ".join(command.help.split("\n\n")[0].split())
        yield ""
    yield f"```\n{path} {' '.join(command.collect_usage_pieces(context))}\n```"
    yield ""
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            yield from _command(command.get_command(context, name), f"{path} {name}", context)
        return
    rows = list(_rows(command, context))
    if rows:
        yield "| argument or option | type | default | what it does |"
        yield "|---|---|---|---|"
        yield from rows
        yield ""


def cli_reference() -> str:
    root = typer.main.get_command(app)
    context = click.Context(root, info_name="fedmeta")
    lines = []
    for name in root.list_commands(context):
        lines += _command(root.get_command(context, name), f"fedmeta {name}", context)
    return "\n".join(lines)


def run_settings_reference() -> str:
    lines = ["| setting | default | read by | what it does |", "|---|---|---|---|"]
    for setting in RUN_SETTINGS.values():
        default = f'`"{setting.default}"`' if isinstance(setting.default, str) else f"`{setting.default}`"
        lines.append(f"| `{setting.name}` | {default} | {', '.join(setting.readers)} | {_cell(setting.help)} |")
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {"cli": cli_reference, "run-settings": run_settings_reference}


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name, render in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
