"""Pieces every CLI command shares: project/json/force options, output, errors, progress.

Only click and the standard library are imported here, so ``thresher --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from thresher.errors import ThresherError

F = TypeVar("F", bound=Callable[..., Any])


def project_option(func: F) -> F:
    return click.option(
        "-p",
        "--project",
        "project_dir",
        default="thresher-project",
        show_default=True,
        envvar="THRESHER_PROJECT",
        type=click.Path(file_okay=False),
        help="Project folder (env THRESHER_PROJECT).",
    )(func)


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object summary on stdout."
    )(func)


def force_option(func: F) -> F:
    return click.option(
        "--force", is_flag=True, help="Redo the stage even if inputs and config are unchanged."
    )(func)


def emit(summary: dict[str, Any], as_json: bool, lines: Iterable[str]) -> None:
    """Print the JSON summary (``--json``) or the human lines."""
    if as_json:
        click.echo(json.dumps(summary, default=str, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def progress_bar(total: int | None = None, desc: str = "", unit: str = "rows"):
    """A tqdm bar on stderr, silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(), leave=False)


class ThresherGroup(click.Group):
    """A click group that turns ``ThresherError`` into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ThresherError as err:
            raise click.ClickException(str(err)) from err
