"""Every command, option and argument of `fedicu` explains itself in `--help`, and `fedicu --help`
lists them without importing what the commands need."""

import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from fedicu.simulations.cli import COMMANDS as COMMAND_MODULES
from fedicu.simulations.cli import app, load_command


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    """(path, command) for the app and every command and sub-command under it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def _tree():
    yield (), typer.main.get_command(app)
    for name in COMMAND_MODULES:
        yield from _commands(load_command(name), (name,))


COMMANDS = list(_tree())
IDS = [" ".join(path) or "fedicu" for path, _ in COMMANDS]


def test_the_tree_holds_the_groups_and_their_sub_commands():
    assert {"simulate", "evaluate", "sweep", "site check", "data to-meds"} <= set(IDS)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_command_option_and_argument_has_help_text(path, command):
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
    missing = [param.name for param in command.params if not (getattr(param, "help", None) or "").strip()]
    assert not missing, f"{' '.join(path) or 'fedicu'}: no help text for {', '.join(map(str, missing))}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_of_every_command_runs(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_list_shows_each_command_s_own_help():
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    with click.Context(group) as ctx:
        for name in group.list_commands(ctx):
            listed = group.get_command(ctx, name)
            assert listed is not None and listed.help == load_command(name).help, name


def test_the_command_list_imports_no_heavy_library():
    heavy = ("torch", "flwr", "sklearn", "pandas", "numpy", "opacus", "ray")
    code = (
        "import sys\n"
        "from fedicu.simulations.cli import app\n"
        "app(['--help'], standalone_mode=False)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "Commands" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(("command", "closest"), [(["simulat"], "simulate"), (["site", "chek"], "check")])
def test_a_misspelt_command_is_refused_with_the_closest_name_once(command, closest):
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert f"Did you mean '{closest}'?" in result.output and result.output.count("Did you mean") == 1
