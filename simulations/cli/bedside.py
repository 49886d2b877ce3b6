"""Using the model at a site: predict, serve, export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated

import typer

from fedicu.shared.config import RunConfig
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.run_dir import trained_task
from fedicu.simulations.cli.common import OPTION_HELP, DataDir, DataFormat, Labels, MappingFile, Strict
from fedicu.simulations.cli.evaluation import default_sets, given_cohort
from fedicu.simulations.cli.terminal import UserError, console

RecalibrationFile = Annotated[
    Path | None,
    typer.Option(
        help="The site's recalibration file for this model (sites/<hospital>/recalibration.json in a simulation, "
        "recalibration-<hospital>-run<id>.json in a deployed site's state-dir)."
    ),
]


def predict(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory.")],
    dataset: DataFormat = "physionet2012",
    data_dir: DataDir = "",
    sets: Annotated[str, typer.Option(help="PhysioNet 2012 sets to score, comma-separated (default: c).")] = "",
    labels: Labels = "",
    mapping: MappingFile = "",
    strict: Strict = False,
    synthetic_stays: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_stays"])] = 2400,
    hospitals: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_hospitals"])] = 4,
    seed: Annotated[int, typer.Option(help=OPTION_HELP["synthetic_seed"])] = 0,
    recalibration: RecalibrationFile = None,
    top: Annotated[int, typer.Option(help="Variables named per stay, by their share of its risk (0: none).")] = 3,
    out: Annotated[Path | None, typer.Option(help="The CSV to write: stay_id, risk, decision, top_variables.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON on stdout.")] = False,
) -> None:
    """Score every stay of a cohort: its risk, the decision at the model's threshold, and why."""
    from fedicu.client.bedside.scoring import Scorer

    if out is None and not as_json:
        raise UserError("--out FILE.csv or --json: say where the predictions go")
    if top < 0:
        raise UserError(f"--top must be 0 or more, not {top}")
    try:
        scorer = Scorer.load(run_dir, recalibration)
        config = RunConfig(
            dataset=dataset, data_dir=data_dir, sets=sets or default_sets(dataset), labels=labels, mapping=mapping,
            strict=strict, synthetic_stays=synthetic_stays, hospitals=hospitals, seed=seed, task=trained_task(run_dir),
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    with console.status("Loading the cohort"):
        seqs, described, _ = given_cohort(config, "", to_score=True)
    with console.status(f"Scoring and explaining {len(seqs):,} stays"):
        rows = scorer.score(seqs, top)
    if out is not None:
        atomic_write_bytes(out, _csv(rows))
        console.print(f"{len(rows):,} stays of {described} scored into [bold]{out}[/]", highlight=False)
    if as_json:
        print(json.dumps({"model": str(run_dir), "threshold": scorer.threshold, "stays": rows}))


def _csv(rows: list[dict]) -> bytes:
    """One line per stay; top_variables as "GCS +0.081; HR +0.040" (signed shares of the risk)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stay_id", "risk", "decision", "top_variables"])
    for r in rows:
        named = "; ".join(f"{t['variable']} {t['share']:+.4f}" for t in r["top_variables"])
        writer.writerow([r["stay_id"], f"{r['risk']:.6f}", int(r["decision"]), named])
    return buffer.getvalue().encode()


def serve(
    run_dir: Annotated[Path | None, typer.Argument(help="A completed run directory (or give --onnx).")] = None,
    onnx: Annotated[
        Path | None, typer.Option(help="Serve this exported file instead, with onnxruntime (no top variables).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    token_file: Annotated[
        Path | None, typer.Option(help="A file holding the bearer token every request must carry.")
    ] = None,
    recalibration: RecalibrationFile = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="The service's SQLite database of followed stays (default: ~/.fedicu/bedside/<model>.sqlite)."
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Variables named per prediction, by their share of its risk.")] = 3,
    fhir_mapping: Annotated[
        Path | None,
        typer.Option(
            help="A site's own LOINC codes, UCUM units and ICU-type codings for /fhir/predict, added to the shipped ones."
        ),
    ] = None,
) -> None:
    """Serve the model to the site's clinical systems over HTTP (REST; OpenAPI docs at /docs)."""
    import gc
    import logging

    import uvicorn

    from fedicu.client.bedside.edge import OnnxScorer
    from fedicu.client.bedside.fhir_mapping import FhirMapping
    from fedicu.client.bedside.scoring import Scorer
    from fedicu.client.bedside.service import create_app
    from fedicu.client.bedside.store import StayStore
    from fedicu.shared.training import set_torch_threads

    if (run_dir is None) == (onnx is None):
        raise UserError("give RUN_DIR or --onnx FILE, one of the two")
    try:
        scorer: Scorer | OnnxScorer = (
            OnnxScorer.load(onnx, recalibration) if onnx else Scorer.load(Path(str(run_dir)), recalibration)
        )
        token = _token(token_file) if token_file else None
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    try:
        mapping = FhirMapping.load(fhir_mapping)
    except ValueError as error:
        raise UserError(f"--fhir-mapping {error}") from error
    if not 1 <= port <= 65535:
        raise UserError(f"--port must lie in 1..65535, not {port}")
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[bold yellow]warning:[/] --host {host} without --token-file: anyone who reaches it may ask")
    set_torch_threads(1)  # requests run side by side, one core each
    sha = scorer.sha256
    database = store or Path.home() / ".fedicu" / "bedside" / f"{sha[:16]}.sqlite"
    try:
        stays = StayStore(database)
    except ValueError as error:
        raise UserError(str(error)) from error
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    requests = logging.getLogger("fedicu.bedside")
    requests.addHandler(handler)
    requests.setLevel(logging.INFO)
    requests.propagate = False  # one line per request, not one more from a handler the libraries set up
    console.print(f"Serving {run_dir or onnx} (model {sha[:12]}) on http://{host}:{port} (docs: /docs{', with the token' if token else ''}); stays in {database}",
                  highlight=False, soft_wrap=True)  # one line, as the request lines after it  # fmt: skip
    if isinstance(scorer, Scorer) and top > 0:
        scorer.explainer  # noqa: B018  # loaded now, not at the first request
    gc.freeze()  # what is loaded now lives as long as the service: no collection walks it again
    try:
        # Uvicorn's access log would write each stay's identifier (in the path): ours names the route.
        uvicorn.run(
            create_app(scorer, stays, mapping, token, top), host=host, port=port, access_log=False, log_config=None
        )
    finally:
        stays.close()


def _token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ValueError(f"--token-file {path}: cannot read it: {error.strerror or error}") from error
    if not token:
        raise ValueError(f"--token-file {path}: the file is empty")
    return token


def export(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory.")],
    onnx: Annotated[Path, typer.Option(help="The ONNX file to write (normalization and threshold in its metadata).")],
    model: Annotated[str, typer.Option(help="Which saved model: best or final.")] = "best",
) -> None:
    """Export the model for edge devices: one ONNX file that onnxruntime scores without PyTorch."""
    from fedicu.client.bedside.edge import export as write_onnx

    if onnx.is_dir():
        raise UserError(f"--onnx {onnx}: a folder; give the file to write")
    if not onnx.parent.is_dir():
        raise UserError(f"--onnx {onnx}: no folder {onnx.parent}")
    try:
        metadata = write_onnx(run_dir, onnx, model)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    console.print(f"Wrote {onnx}: model {metadata['sha256'][:12]}, threshold {metadata['threshold']:.3f}",
                  highlight=False)  # fmt: skip
