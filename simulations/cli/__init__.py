"""The `fedicu` command line: the app, its commands (one module per group) and `main`."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import sys
from typing import Annotated

import click
import typer
from rich.markup import escape

from fedicu.shared import stopping
from fedicu.shared.errors import DataError
from fedicu.simulations.cli.common import RunFailed, RunInterrupted, UserError, console

from . import bedside, data, deployment, evaluation, privacy, report, site, tools, training

app = typer.Typer(
    help="Federated ICU mortality prediction: simulate hospitals, compare baselines, evaluate models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"fedicu {importlib.metadata.version('fedicu')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Federated ICU mortality prediction: simulate hospitals, compare baselines, evaluate models."""


# In the order `fedicu --help` lists them.
app.command()(training.simulate)
app.command()(training.centralized)
app.command("local")(training.local_)
app.command()(training.compare)
app.command()(training.validate)
app.command()(evaluation.evaluate)
app.command("cross-site")(evaluation.cross_site_)
app.command()(bedside.predict)
app.command()(bedside.serve)
app.command()(bedside.export)
app.command()(report.report)
app.command()(privacy.audit)
app.command()(privacy.sweep)
app.command()(tools.bench)
app.command()(deployment.certs)
app.command("deploy-demo")(deployment.deploy_demo)
app.command("export-synthetic")(tools.export_synthetic)
app.add_typer(site.site_app, name="site")
app.add_typer(data.data_app, name="data")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signal that asked this process to stop


def _stop(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM stops the command where it is (KeyboardInterrupt here, the
    stop flag for other threads); a second one ends the process at once."""
    if stopping.stop_requested():
        os._exit(128 + signum)
    _received.append(signum)
    stopping.request_stop()
    raise KeyboardInterrupt


def _exit_interrupted(message: str) -> None:
    """Exit at once: the run's state is recorded and its processes are stopped, but threads of
    the libraries may still wait on what was stopped (a result from a Ray worker that is gone),
    and a normal exit would wait for them."""
    signum = _received[0] if _received else signal.SIGINT
    console.print(f"[bold yellow]interrupted[/] ({signal.Signals(signum).name}){message}", soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def main() -> None:
    """Entry point: user mistakes become one clear line and exit code 2; Ctrl-C (SIGINT) and
    SIGTERM stop the command cleanly with exit code 130 or 143."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        app(standalone_mode=False)
    except RunInterrupted as error:
        _exit_interrupted(f": {escape(str(error))}")
    except (UserError, DataError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except RunFailed as error:
        console.print(f"[bold red]run failed:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except click.ClickException as error:  # unknown option, bad value: click's own message
        error.show()
        sys.exit(error.exit_code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:  # click's name for the KeyboardInterrupt it caught
        _exit_interrupted("")
