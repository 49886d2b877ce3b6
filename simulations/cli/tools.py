"""Tools around the main job: bench (performance on this machine), export-synthetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedicu.simulations.cli.common import OPTION_HELP, fmt
from fedicu.simulations.cli.terminal import UserError, console


def bench(
    data_dir: Annotated[
        str,
        typer.Option(
            help="PhysioNet 2012 folder with sets A and B: adds the loader timing and runs the epoch and overhead "
            "parts on it too (default: the synthetic cohort only, no loader timing)."
        ),
    ] = "",
    quick: Annotated[
        bool, typer.Option(help="A small version for CI-sized checks: fewer stays, rounds and hospitals.")
    ] = False,
    repeats: Annotated[
        int,
        typer.Option(
            help="Runs of each timing, or alternating pairs of each ratio (--quick: one simulation per cohort); "
            "the median is reported (at least 1)."
        ),
    ] = 5,
    as_json: Annotated[
        bool, typer.Option("--json", help="End with the whole report as one JSON object on stdout.")
    ] = False,
    serve: Annotated[
        Path | None,
        typer.Option(
            help="Instead: the bedside service of this completed run, on one core: single-stay latency and a "
            "load of 2,000 requests from 8 clients."
        ),
    ] = None,
) -> None:
    """Measure loading, DP cost, framework overhead and scale on this machine (see BENCHMARKS.md)."""
    from fedicu.simulations import bench as benchmark

    if serve is not None:
        _bench_serve(serve, as_json)
        return
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {repeats}")
    if data_dir and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    table = Table(title=f"fedicu bench{' --quick' if quick else ''} (median of {repeats} where repeated)")
    table.add_column("part", no_wrap=True)
    table.add_column("measure", no_wrap=True)  # never cut: federated_over_local_compute_ratio
    table.add_column("value", justify="right", overflow="fold")  # a long error wraps instead

    with console.status("Benchmarking: loader") as status:

        def on_step(part: str, result: dict) -> None:
            for key, value in result.items():
                table.add_row(part, key, fmt(value))
            status.update(f"Benchmarking: {part} done, next part running")

        report = benchmark.run(data_dir, quick, repeats, on_step)
    console.print(table)
    if as_json:
        print(json.dumps(report, default=str))


def _bench_serve(run_dir: Path, as_json: bool) -> None:
    from fedicu.shared.run_dir import load_trained
    from fedicu.simulations.bench_serve import measure
    from fedicu.simulations.cli.terminal import RunFailed

    try:
        load_trained(run_dir)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"--serve: {error}") from error
    with console.status("Benchmarking the bedside service"):
        try:
            report = measure(run_dir)
        except RuntimeError as error:
            raise RunFailed(str(error)) from error
    table = Table(title="fedicu bench --serve: POST /predict on one core, loopback")
    table.add_column("measure", no_wrap=True)
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, fmt(value))
    console.print(table)
    if as_json:
        print(json.dumps(report))


def export_synthetic(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write set-<SET>/ and Outcomes-<SET>.txt into (created if absent).")
    ],
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = 2400,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_hospitals"])] = 4,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_seed"])] = 0,
    set_name: Annotated[
        str, typer.Option("--set", help="PhysioNet 2012 set the files are named for: a, b or c.")
    ] = "a",
) -> None:
    """Write the synthetic cohort as PhysioNet 2012 files (to rehearse the real loader or a site)."""
    from fedicu.shared.datasets import physionet2012, synthetic

    if set_name not in physionet2012.VALID_SETS:
        raise UserError(f"--set must be one of {', '.join(physionet2012.VALID_SETS)}, not {set_name!r}")
    try:
        cohort = synthetic.generate(hospitals=hospitals, stays=synthetic_stays, seed=seed)
        written = physionet2012.write(cohort, out_dir, set_name)
    except FileExistsError as error:
        raise UserError(f"{error.filename or out_dir}: already exists; choose another folder or --set") from error
    except ValueError as error:
        raise UserError(str(error)) from error
    console.print(f"Wrote {len(cohort)} stays to {written} and {out_dir / f'Outcomes-{set_name}.txt'}")
