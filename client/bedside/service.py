"""The bedside service: the site's clinical systems ask it for a stay's risk over HTTP.

- `POST /predict`: a whole stay (descriptors and measurements) -> its risk, the decision at the
  threshold, the variables that drive it;
- `POST /fhir/predict`: the same for a FHIR R4 Bundle of the stay's Encounter, Patient and
  LOINC-coded Observations (`fhir`);
- `POST /stays/{stay_id}/observations`: measurements of a stay as they arrive, kept in the
  service's own database (`StayStore`), and `GET /stays/{stay_id}/risk`: the risk as it stood at
  the end of every hour so far, and the first hour it crossed the threshold (early warning);
- `GET /monitoring`: drift of what was scored against the training reference (`drift`);
- `GET /health`, `GET /model` (the model card), `/docs` (OpenAPI).

Scoring routes run in the server's thread pool (`fedicu serve` gives PyTorch one thread each),
so `/health` answers while a stay is being scored.

A request that breaks the schema gets a 422 naming the field (pydantic). No patient value, and
no stay identifier, is written to the log: only the method, the route and the status. With a
token every request needs `Authorization: Bearer <token>` (401 otherwise).
"""

import hmac
import logging
import time
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedicu.client.bedside import drift, fhir
from fedicu.client.bedside.edge import OnnxScorer
from fedicu.client.bedside.fhir_mapping import FhirMapping
from fedicu.client.bedside.scoring import Scorer
from fedicu.client.bedside.stays import Descriptors, Measurement, Stay, to_model_input
from fedicu.client.bedside.store import StayStore
from fedicu.shared.preprocessing import HOURS, Sequences, reference_histogram

log = logging.getLogger("fedicu.bedside")


class Share(BaseModel):
    variable: str
    share: float = Field(description="Its share of the model's risk, from integrated gradients.")


class Prediction(BaseModel):
    stay_id: str
    risk: float = Field(description="Probability of the outcome (after the site's recalibration, if given).")
    decision: bool = Field(description="risk >= threshold")
    threshold: float
    top_variables: list[Share]
    attention: list[float] | None = Field(
        default=None, description="Per hour since admission, the weight an attention model gave it (summing to 1)."
    )
    values_ignored: int = Field(description="Physiologically impossible values left out, as in training.")
    model: str = Field(description="SHA-256 of the model's weights.")


class FhirPrediction(Prediction):
    observations_skipped: dict[str, int] = Field(description="Observations left out, by reason.")


class Observations(BaseModel):
    static: Descriptors | None = Field(default=None, description="Descriptors; replace the stay's when given.")
    measurements: list[Measurement] = Field(default_factory=list, max_length=100_000)


class Followed(BaseModel):
    stay_id: str
    measurements: int = Field(description="All the stay's measurements so far.")


class HourlyRisk(BaseModel):
    hour: int = Field(description="The risk as it stood at the end of this hour since admission.")
    risk: float


class Trajectory(BaseModel):
    stay_id: str
    threshold: float
    hours: list[HourlyRisk]
    crossed_at_hour: int | None = Field(description="The first hour whose risk reached the threshold.")


class RouteLog:
    """One log line per request: method, route template (no stay identifier), status, time."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "?")  # set by the router on this very scope
            log.info("%s %s %d %.1f ms", scope["method"], route, status[0], 1e3 * (time.perf_counter() - started))


class BearerToken:
    """With a token, every request needs `Authorization: Bearer <token>`: refused with a 401
    before anything of it is read."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self.expected):
                refusal = JSONResponse(
                    {"detail": "a valid bearer token is needed"}, 401, {"WWW-Authenticate": "Bearer"}
                )
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(
    scorer: Scorer | OnnxScorer,
    store: StayStore,
    fhir_mapping: FhirMapping,
    token: str | None = None,
    top: int = 3,
) -> FastAPI:
    """`scorer`: the run's PyTorch model, or an exported ONNX file (no top variables then)."""
    model_sha = scorer.sha256
    app = FastAPI(title="fedicu bedside")
    if token is not None:
        app.add_middleware(BearerToken, token=token)
    app.add_middleware(RouteLog)  # the outermost: refusals are logged too

    def monitor(stay_id: str, seqs: Sequences) -> None:
        """Count the stay's observed hours, as training counted its stays' (each stay once)."""
        store.record_scored(stay_id, reference_histogram(seqs))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_sha}

    @app.get("/model")
    async def model_card() -> dict[str, Any]:
        return scorer.card | {"sha256": model_sha, "threshold_in_use": scorer.threshold,
                              "recalibration": scorer.recalibration.method if scorer.recalibration else None}  # fmt: skip

    def answer(stay: Stay, explain: bool) -> Prediction:
        seqs, ignored = to_model_input([(stay.static, stay.measurements)])
        (row,) = scorer.score(seqs, top if explain else 0)
        monitor(stay.stay_id, seqs)
        return Prediction(
            stay_id=stay.stay_id, risk=row["risk"], decision=row["decision"], threshold=scorer.threshold,
            top_variables=row["top_variables"], attention=row.get("attention"), values_ignored=ignored, model=model_sha,
        )  # fmt: skip

    @app.post("/predict")
    def predict(stay: Stay, explain: bool = True) -> Prediction:
        """`explain=false` leaves the top variables out: the risk alone takes a few milliseconds,
        integrated gradients some twenty more."""
        return answer(stay, explain)

    @app.post("/fhir/predict")
    def fhir_predict(
        bundle: Annotated[Any, Body(description="A FHIR R4 Bundle: the stay's Encounter, Patient, Observations.")],
        explain: bool = True,
    ) -> FhirPrediction:
        """The stay a FHIR Bundle describes (see `fedicu.client.bedside.fhir`), answered as `/predict`."""
        try:
            read = fhir.read_bundle(bundle, fhir_mapping)
        except fhir.BundleError as error:
            raise RequestValidationError([e | {"loc": ("body", *e["loc"])} for e in error.errors]) from None
        return FhirPrediction(**answer(read.stay, explain).model_dump(), observations_skipped=dict(read.skipped))

    StayId = Annotated[str, Path(min_length=1, max_length=200, description="The site's identifier of the stay.")]

    @app.post("/stays/{stay_id}/observations")
    def observe(stay_id: StayId, observations: Observations) -> Followed:
        return Followed(
            stay_id=stay_id, measurements=store.append(stay_id, observations.static, observations.measurements)
        )

    @app.get("/stays/{stay_id}/risk")
    def trajectory(stay_id: StayId) -> Trajectory:
        followed = store.stay(stay_id)
        if followed is None:
            raise HTTPException(404, "no such stay: post its observations first")
        static, measurements = followed
        last = max((m.minute for m in measurements), default=0)
        hours = list(range(1, min(HOURS, last // 60 + 1) + 1))
        # The risk at the end of hour h rests on what was measured before it ended.
        known = [(static, [m for m in measurements if m.minute < h * 60 or h == HOURS]) for h in hours]
        seqs = to_model_input(known)[0]
        risks = scorer.risks(seqs)
        monitor(stay_id, seqs.take(np.array([-1])))  # the last hour holds every measurement: the whole stay
        crossed = next((h for h, r in zip(hours, risks, strict=True) if r >= scorer.threshold), None)
        return Trajectory(
            stay_id=stay_id, threshold=scorer.threshold, crossed_at_hour=crossed,
            hours=[HourlyRisk(hour=h, risk=float(r)) for h, r in zip(hours, risks, strict=True)],
        )  # fmt: skip

    @app.get("/monitoring")
    def monitoring() -> dict[str, Any]:
        counts, stays, measured = store.drift_counts()
        return drift.report(scorer.norm, counts, stays, measured, scorer.card.get("training", {}).get("dp", False))

    return app
