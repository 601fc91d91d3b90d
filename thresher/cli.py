"""The ``thresher`` command. Commands are thin: parse, call the library, print.

Subcommand modules import only click at import time; heavy libraries load inside the commands.
"""

from __future__ import annotations

import click

import thresher
from thresher.cli_common import ThresherGroup, force_option
from thresher.quiet import configure_output


@click.group(cls=ThresherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(thresher.__version__, prog_name="thresher")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More logging (-v info and the libraries' own warnings and bars, -vv debug).",
)
def main(verbose: int) -> None:
    """thresher: curate text data, review it in Argilla, tune LoRA models, loop.

    \b
    Example, on the built-in demo corpus:
      thresher init demo-project
      thresher curate ingest --demo -p demo-project
    """
    configure_output(verbose)


@main.command("init")
@click.argument("directory", type=click.Path(file_okay=False), default="thresher-project")
@force_option
def init_command(directory: str, force: bool) -> None:
    """Create a project folder with a commented thresher.yaml.

    \b
    Example:
      thresher init my-project
    """
    from thresher.config import write_template

    path = write_template(directory, overwrite=force)
    click.echo(f"wrote {path}; edit labels and columns, then run `thresher curate ingest`")


def _register() -> None:
    from curate.cli import curate
    from curate.dedup_cli import register as register_dedup
    from loop.cli import simulate_command
    from loop.monitor_cli import monitor_command
    from loop.round_cli import round_command
    from review.cli import review
    from tune.cli import tune
    from tune.serve_cli import serve_command

    register_dedup(curate)
    main.add_command(curate)
    main.add_command(review)
    main.add_command(tune)
    main.add_command(simulate_command)
    main.add_command(round_command)
    main.add_command(monitor_command)
    main.add_command(serve_command)


_register()
