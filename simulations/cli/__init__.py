"""The `fedicu` command line: the app, its commands (one module per group) and `main`."""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from rich.markup import escape

from fedicu.shared import stopping
from fedicu.shared.errors import DataError
from fedicu.simulations.cli.terminal import RunFailed, RunInterrupted, UserError, console

# name -> (module of `fedicu.simulations.cli`, its command function or sub-app), in the order
# `fedicu --help` lists them
COMMANDS = {
    "simulate": ("training", "simulate"),
    "centralized": ("training", "centralized"),
    "local": ("training", "local_"),
    "compare": ("comparison", "compare"),
    "validate": ("training", "validate"),
    "evaluate": ("evaluation", "evaluate"),
    "cross-site": ("evaluation", "cross_site_"),
    "predict": ("bedside", "predict"),
    "serve": ("bedside", "serve"),
    "export": ("bedside", "export"),
    "report": ("report", "report"),
    "audit": ("privacy", "audit"),
    "sweep": ("privacy", "sweep"),
    "bench": ("tools", "bench"),
    "certs": ("deployment", "certs"),
    "deploy-demo": ("deployment", "deploy_demo"),
    "export-synthetic": ("tools", "export_synthetic"),
    "site": ("site", "site_app"),
    "data": ("data", "data_app"),
}


@functools.cache
def _summary(module: str, name: str) -> str:
    """The help of command function or sub-app `name`, read from its module's source.

    Importing the command modules costs seconds (torch, Flower, scikit-learn); their source
    holds the same text: a function's docstring, or a sub-app's `typer.Typer(help=...)`.
    """
    spec = importlib.util.find_spec(f"{__name__}.{module}")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_docstring(node) or ""
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            call = node.value
            assert isinstance(call, ast.Call)
            return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == "help"), "")
    raise LookupError(f"{module}.py defines no command {name}")


def load_command(name: str) -> click.Command:
    """The click command `name`, its module imported."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    command: click.Command
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommands(typer.core.TyperGroup):
    """The command group that imports a command's module only when that command is run or asked
    for its own help; the list in `fedicu --help` comes from the sources (`_summary`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return click.Command(cmd_name, help=_summary(*COMMANDS[cmd_name]))

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            name, _, rest = super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as error:  # suggest from every command, loaded or not
            raise click.exceptions.NoSuchCommand(error.command_name, possibilities=COMMANDS, ctx=ctx) from None
        assert name is not None
        return name, load_command(name), rest


app = typer.Typer(
    cls=LazyCommands,
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, a service manager, a closed terminal
_received: list[int] = []  # the signal that asked this process to stop


def _stop(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM stops the command where it is (the stop flag, and a
    KeyboardInterrupt here unless the code running notices the flag); a second one ends the
    process at once."""
    if stopping.stop_requested():
        os._exit(128 + signum)
    _received.append(signum)
    stopping.request_stop()
    if stopping.interrupts_main_thread():
        raise KeyboardInterrupt
    with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) takes no more output
        console.print("stopping once the hospitals' steps under way end; a second signal quits at once", style="yellow")


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
    """Entry point: user mistakes become one clear line and exit code 2; Ctrl-C (SIGINT),
    SIGTERM and SIGHUP stop the command cleanly with exit code 130, 143 or 129."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        exit_code = app(standalone_mode=False)  # typer returns an exit code rather than raise it
    except RunInterrupted as error:
        _exit_interrupted(f": {escape(str(error))}")
    except stopping.StopRequested:  # a simulation's server noticed the stop (no run directory to keep)
        _exit_interrupted("")
    except (UserError, DataError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except RunFailed as error:
        console.print(f"[bold red]run failed:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except click.ClickException as error:  # unknown option, bad value: click's own message
        error.show()
        sys.exit(error.exit_code)
    except typer.Abort:  # end of input at a prompt
        _exit_interrupted("")
    if stopping.stop_requested():  # the signal's KeyboardInterrupt (typer's exit code 130), or a finished run
        _exit_interrupted("")
    if isinstance(exit_code, int) and exit_code:
        sys.exit(exit_code)
