"""Every command, option and argument of `fedicu` explains itself in `--help`."""

import click
import pytest
import typer
from typer.testing import CliRunner

from fedicu.simulations.cli import app


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    """(path, command) for the app and every command and sub-command under it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))
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
