"""`fedicu site check` and `fedicu site start`: a hospital checks its own data, then joins a federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from fedicu.shared.config import RunConfig
from fedicu.simulations.cli.common import OPTION_HELP, DataFormat, Labels, MappingFile, Strict, titled
from fedicu.simulations.cli.terminal import RunFailed, UserError, console

site_app = typer.Typer(
    help="A hospital's site: check its own data, then join a federation.",
    no_args_is_help=True,
    suggest_commands=False,  # click suggests the closest name itself
)
SEVERITY_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red"}


@site_app.command("check")
def check_site(
    data_dir: Annotated[Path, typer.Option(help=OPTION_HELP["data_dir"])],
    dataset: DataFormat = "physionet2012",
    labels: Labels = "",
    mapping: MappingFile = "",
    task: Annotated[str, typer.Option(help=OPTION_HELP["task"])] = RunConfig.task,
    variables: Annotated[str, typer.Option(help=OPTION_HELP["variables"])] = "",
    strict: Strict = False,
    val_fraction: Annotated[float, typer.Option(help=OPTION_HELP["val_fraction"])] = RunConfig.val_fraction,
    test_fraction: Annotated[
        float, typer.Option(help="Share (0 to 1) of the site's stays kept as its own test split.")
    ] = RunConfig.test_fraction,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Validate a site's data folder: exit 0 if it can be used (warnings allowed), 2 if not."""
    from fedicu.shared.site_check import check

    for option, share in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 < share < 1:
            raise UserError(f"{option} must lie in (0, 1), not {share:g}")
    try:
        config = RunConfig(dataset=dataset, data_dir=str(data_dir), labels=labels, mapping=mapping, task=task,
                           variables=variables, strict=strict, val_fraction=val_fraction)  # fmt: skip
    except ValueError as error:
        raise UserError(str(error)) from error
    if dataset == "synthetic":
        raise UserError("--data-format synthetic has no folder to check; give the site's data format")
    with console.status(f"Checking {escape(str(data_dir))}"):
        report = check(config.data_source(), val_fraction, config.model_variables, test_fraction)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        console.print(site_tables(report))
    _usable(report, data_dir, "the JSON report" if as_json else "the table above")


def _usable(report, data_dir: Path, shown_in: str) -> None:
    """Refuse an unusable site (exit code 2); otherwise say so in one line."""
    if not report.usable:
        raise UserError(f"{report.first_error} ({report.error_count} problem(s) in all; see {shown_in})")
    warnings = sum(f.severity == "warning" for f in report.findings)
    console.print(f"[green]{escape(str(data_dir))} can be used[/] ({warnings} warning(s))", highlight=False)


@site_app.command("start")
def start_site(
    data_dir: Annotated[Path, typer.Option(help=OPTION_HELP["data_dir"])],
    superlink: Annotated[str, typer.Option(help="The SuperLink's Fleet API, HOST:PORT.")],
    ca: Annotated[
        Path | None, typer.Option(help="CA certificate of the SuperLink's TLS (`fedicu certs`: ca.crt).")
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="The site's private key (`fedicu certs`: sites/<site>.key); the SuperLink registered its .pub."
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS, no node authentication: rehearsals only.")
    ] = False,
    hospital: Annotated[str, typer.Option(help="Name in the results (default: the key's file name).")] = "",
    state_dir: Annotated[
        Path, typer.Option(help="Flower's state, privacy ledgers, logs/ (SuperNode and ClientApp).")
    ] = Path("fedicu-site"),
    runtime_port: Annotated[int, typer.Option(help="The SuperNode's loopback port; one per site on a machine.")] = 9094,
    rejoin_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to keep trying while the SuperLink refuses the SuperNode (after a crash it counts "
            "the site's previous SuperNode online for up to 60 s); 0: give up at once."
        ),
    ] = 90.0,
    dataset: DataFormat = "physionet2012",
    labels: Labels = "",
    mapping: MappingFile = "",
    strict: Strict = False,
    task: Annotated[str, typer.Option(help=f"{OPTION_HELP['task']} The federation's, for the check.")] = RunConfig.task,
) -> None:
    """Join a federation: check the site's data, then run its SuperNode until stopped (Ctrl-C, SIGTERM)."""
    from fedicu.shared.site_check import check
    from fedicu.simulations.deployment import site

    credentials = _credentials(ca, key, insecure)
    host, _, port = superlink.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--superlink {superlink}: expected HOST:PORT, e.g. fl.example.org:9092")
    if not 0 < runtime_port < 65536:
        raise UserError(f"--runtime-port must be a port number (1 to 65535), not {runtime_port}")
    if dataset == "synthetic":
        raise UserError("--data-format synthetic has no folder; give the site's data format")
    if not rejoin_timeout >= 0:
        raise UserError(f"--rejoin-timeout must be 0 or more seconds, not {rejoin_timeout}")
    try:
        config = RunConfig(dataset=dataset, data_dir=str(data_dir), labels=labels, mapping=mapping, task=task,
                           strict=strict)  # fmt: skip
    except ValueError as error:
        raise UserError(str(error)) from error
    with console.status(f"Checking {escape(str(data_dir))}"):
        report = check(config.data_source(), config.val_fraction, config.model_variables, config.test_fraction)
    if not report.usable:
        console.print(site_tables(report))
    _usable(report, data_dir, "the table above")
    name = hospital or (key.stem if key is not None else data_dir.resolve().name)
    joining = site.Site(name, config.data_source(), superlink, state_dir, *credentials, runtime_port, rejoin_timeout)
    try:
        site.run(joining, lambda line: console.print(escape(line), highlight=False))
    except site.SiteStopped as error:
        raise RunFailed(str(error)) from error


def _credentials(ca: Path | None, key: Path | None, insecure: bool) -> tuple[Path | None, Path | None]:
    """(CA certificate, site key), both files that exist; (None, None) with --insecure."""
    if insecure:
        if ca is not None or key is not None:
            raise UserError("--insecure takes no --ca or --key: it turns TLS and node authentication off")
        return None, None
    for option, path in (("--ca", ca), ("--key", key)):
        if path is None:
            raise UserError(f"{option} is required (or --insecure, for a rehearsal on a trusted network only)")
        if not path.is_file():
            raise UserError(f"{option} {path}: no such file")
    return ca, key


# One row per count and one column per set (a, b, c at most): a column per count did not fit 80 columns.
SET_COUNTS = {
    "record files": "record_files", "unusable record files": "unusable_records", "Outcomes rows": "outcome_rows",
    "usable stays": "stays", "deaths": "deaths", "measurements": "measurements",
    "stays with descriptors only": "descriptors_only",
}  # fmt: skip


def _problem(text: str) -> Padding:
    """A problem under its finding, indented on every line it wraps or folds onto."""
    return Padding(Text(text, overflow="fold"), (0, 0, 0, 2))


def site_tables(report) -> Group:
    """The per-set counts and the findings of a site check."""
    counts = Table()
    counts.add_column("")
    for s in report.sets:
        counts.add_column(s.name, justify="right", no_wrap=True)
    for name, key in SET_COUNTS.items():
        counts.add_row(name, *("–" if getattr(s, key) is None else f"{getattr(s, key):,}" for s in report.sets))
    findings = Table(title="Findings", title_justify="left", show_lines=True)
    findings.add_column("severity", no_wrap=True)
    findings.add_column("check")
    findings.add_column("finding", overflow="fold")
    for f in report.findings:
        shown = [Text(f.message, overflow="fold")] + [_problem(str(p)) for p in f.problems[:3]]
        if len(f.problems) > 3:
            shown.append(_problem(f"... and {len(f.problems) - 3} more"))
        findings.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", f.check, Group(*shown))
    return Group(titled(f"Sets in {report.data_dir}", counts), findings) if report.sets else Group(findings)
