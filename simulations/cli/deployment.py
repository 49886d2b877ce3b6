"""Deployment: certificates for a real federation, and a local rehearsal of one (deploy-demo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedicu.server.server_app import default_run_dir
from fedicu.shared import compat
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets.synthetic import hospital_names
from fedicu.shared.run_dir import CONFIG_FILE, CROSS_SITE_JSON, METRICS_JSON, RunDirectory
from fedicu.simulations.cli.common import OPTION_HELP, best_round_tables, cross_site_table, rounds_table
from fedicu.simulations.cli.terminal import RunFailed, UserError, console
from fedicu.simulations.deployment.rehearsal import RESTART_ROUND_SECONDS_PER_SITE


def certs(
    out: Annotated[Path, typer.Option(help="Folder to create for the certificates and keys (never overwritten).")],
    host: Annotated[
        list[str], typer.Option(help="The SuperLink's host name or IP address, as sites dial it (repeatable).")
    ],
    site: Annotated[
        list[str], typer.Option(help="A site name that gets a key pair for node authentication (repeatable).")
    ],
) -> None:
    """Create a CA, the SuperLink's TLS certificate and one authentication key pair per site."""
    from fedicu.simulations.deployment.certs import CA_CERT, CA_KEY, SITES_DIR, create

    try:
        written = create(out, host, site)
    except (ValueError, FileExistsError) as error:
        raise UserError(str(error)) from error
    console.print(
        f"Wrote {len(written)} files to {out}: give each site {CA_CERT} and its own {SITES_DIR}/<site>.key; "
        f"keep {CA_KEY} private"
    )


def deploy_demo(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder to create for certificates, site data, logs and the run directory (default: runs/deploy-demo-<timestamp>)."
        ),
    ] = None,
    sites: Annotated[int, typer.Option(help="Hospitals: one SuperNode each, with its own synthetic data.")] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds to run.")] = 2,
    secagg: Annotated[bool, typer.Option(help=OPTION_HELP["secagg"])] = False,
    insecure: Annotated[
        bool, typer.Option(help="No TLS and no node authentication: local experiments only, never with patient data.")
    ] = False,
    run_config: Annotated[
        str, typer.Option(help="More run-config for `flwr run`, e.g. 'dp=true target-epsilon=4.0'.")
    ] = "",
    timeout: Annotated[
        float, typer.Option(help="Seconds the run may take once `flwr run` submitted it, before the rehearsal fails.")
    ] = 1800.0,
    restart_site: Annotated[
        str,
        typer.Option(
            help="A site (hospital-N) whose machine is killed once round 1 is complete and that is started again "
            "with `fedicu site start`: it rejoins and the run completes. Rounds wait "
            f"{RESTART_ROUND_SECONDS_PER_SITE:g} s per site for a missing one.",
        ),
    ] = "",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Then run the same sites through the Simulation Engine and end with one JSON object: "
            "deployed_round_s, simulated_round_s (medians after the first round).",
        ),
    ] = False,
) -> None:
    """Rehearse a deployment here: a SuperLink and one SuperNode per site as processes, TLS, node keys, `flwr run`."""
    from fedicu.simulations.deployment.rehearsal import DeploymentError, rehearse, round_times

    out = (out or default_run_dir().with_name(f"deploy-demo-{default_run_dir().name}")).absolute()
    if out.exists():
        raise UserError(f"--out {out}: exists; give a folder to create")
    if not (2 if secagg else 1) <= sites <= 16:
        raise UserError(
            f"--sites must lie in {2 if secagg else 1}..16{' with --secagg' if secagg else ''}, not {sites}"
        )
    if rounds < 1:
        raise UserError("--rounds must be at least 1")
    if restart_site and restart_site not in (names := hospital_names(sites)):
        raise UserError(f"--restart-site {restart_site}: not one of the sites ({names[0]} to {names[-1]})")
    if restart_site and rounds < 2:
        raise UserError("--restart-site needs --rounds 2 or more: the site is restarted after round 1")
    try:  # refused here rather than by the ServerApp once every process is up
        RunConfig.from_flower(
            {"sites": sites, "rounds": rounds, "secagg": secagg, **compat.parse_run_config(run_config)}
        )
    except (ValueError, click.ClickException) as error:
        message = error.message if isinstance(error, click.ClickException) else str(error)
        raise UserError(f"--run-config {run_config!r}: {message}") from None
    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: traffic is unencrypted and any process that reaches the port can join as a "
            "hospital. Local experiments only, never with patient data.[/]"
        )
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    with progress:
        task = progress.add_task("Deployment rounds", total=rounds)
        try:
            run_dir = rehearse(
                out, sites, rounds, secagg, insecure, run_config, timeout,
                on_step=lambda text: progress.console.print(f"[green]✓[/] {escape(text)}", highlight=False),
                on_round=lambda done: progress.update(task, completed=done), restart_site=restart_site,
            )  # fmt: skip
        except DeploymentError as error:
            raise RunFailed(f"{error}\nLogs: {out / 'logs'}") from error
    rows = json.loads((run_dir / METRICS_JSON).read_text())
    title = f"Deployment rehearsal ({'SecAgg+' if secagg else 'plain aggregation'}{', INSECURE' if insecure else ''})"
    seed = RunConfig.from_flower(json.loads((run_dir / CONFIG_FILE).read_text())).seed
    console.print(rounds_table(title, rows, seed))
    console.print(best_round_tables(run_dir, seed))
    console.print(cross_site_table(RunDirectory(run_dir).read_json(CROSS_SITE_JSON)))
    console.print(f"Run directory: {run_dir}", highlight=False)
    if as_json:
        with console.status("The same sites through the Simulation Engine"):
            times = round_times(out, run_dir)
        print(json.dumps({"sites": sites, "rounds": rounds, "run_dir": str(run_dir), **times}))
