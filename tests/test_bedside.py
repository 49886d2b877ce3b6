"""The model at the bedside: `fedicu predict`, and `fedicu serve` as a real uvicorn server on
loopback, answering what the site's clinical systems send."""

import csv
import json
import math
import re
import socket
import subprocess

import httpx
import numpy as np
import pytest

from fedicu.client.bedside.edge import OnnxScorer
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort
from fedicu.shared.preprocessing import clean, to_features, to_sequences
from fedicu.shared.run_dir import load_trained
from fedicu.shared.training import predict
from tests.deployments import FEDICU, wait_until
from tests.fhir_bundles import MODELLED, bundle_of
from tests.test_simulation import fedicu

COHORT = ("--dataset", "synthetic", "--synthetic-stays", "300", "--seed", "5")
TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bedside") / "run"
    trained = fedicu("simulate", "--hospitals", "2", "--rounds", "2", "--synthetic-stays", "800", "--hidden-size",
                     "16", "--out", str(out))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    return out


@pytest.fixture(scope="module")
def cohort():
    """The stays `COHORT` names, raw as a site's systems would send them."""
    return load_cohort(RunConfig(dataset="synthetic", synthetic_stays=300, seed=5).data_source())


@pytest.fixture(scope="module")
def predicted(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "predictions.csv"
    result = fedicu("predict", str(run), *COHORT, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out


def _as_json(cohort, stay_id: int) -> dict:
    stay = cohort.stays.loc[stay_id]
    static = {"Age": stay.age, "Gender": stay.gender, "Height": stay.height, "Weight": stay.weight,
              "ICUType": stay.icu_type}  # fmt: skip
    static = {k: (int(v) if k in ("Gender", "ICUType") else float(v)) for k, v in static.items() if not math.isnan(v)}
    rows = cohort.measurements[cohort.measurements["stay_id"] == stay_id]
    measurements = [{"minute": int(r.minute), "variable": str(r.variable), "value": float(r.value)}
                    for r in rows.itertuples()]  # fmt: skip
    return {"stay_id": f"bed-{stay_id}", "static": static, "measurements": measurements}


def test_predict_gives_each_stay_its_risk_decision_and_top_variables(run, cohort, predicted):
    report, csv_file = predicted
    model, norm, threshold = load_trained(run)
    seqs = to_sequences(clean(cohort)[0])
    expected = predict(model, to_features(seqs, norm, model.config.channels))
    stays = report["stays"]
    assert [s["stay_id"] for s in stays] == seqs.stay_ids.tolist()
    np.testing.assert_allclose([s["risk"] for s in stays], expected, atol=1e-9)
    assert report["threshold"] == threshold
    assert all(s["decision"] == (s["risk"] >= threshold) for s in stays)
    assert all(len(s["top_variables"]) == 3 for s in stays)
    with open(csv_file) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["stay_id"]) for r in rows] == seqs.stay_ids.tolist()
    np.testing.assert_allclose([float(r["risk"]) for r in rows], expected, atol=1e-6)
    first = stays[0]["top_variables"][0]
    assert rows[0]["top_variables"].startswith(f"{first['variable']} {first['share']:+.4f}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`fedicu serve` in its own process, stopped when the block ends."""

    def __init__(self, run, tmp_path, store):
        (tmp_path / "token").write_text(TOKEN + "\n")
        self.port, self.log = _free_port(), tmp_path / f"serve-{_free_port()}.log"
        self.command = [str(FEDICU), "serve", str(run), "--port", str(self.port), "--store", str(store),
                        "--token-file", str(tmp_path / "token")]  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        wait_until(self._up, 120, "the service answers /health")
        return self

    def _up(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *exc):
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def service(run, tmp_path):
    with Service(run, tmp_path, tmp_path / "stays.sqlite") as started:
        yield started
    assert started.process.returncode is not None


def test_the_service_gives_the_risk_predict_gives_and_logs_no_patient_data(service, cohort, predicted):
    report, _ = predicted
    for expected in report["stays"][:25]:
        answer = service.client.post("/predict", json=_as_json(cohort, expected["stay_id"]))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["stay_id"] == f"bed-{expected['stay_id']}"
        assert body["risk"] == pytest.approx(expected["risk"], abs=1e-6)
        assert body["decision"] == expected["decision"] and body["threshold"] == report["threshold"]
        assert [t["variable"] for t in body["top_variables"]] == [t["variable"] for t in expected["top_variables"]]
    quick = service.client.post("/predict", params={"explain": "false"}, json=_as_json(cohort, expected["stay_id"]))
    assert quick.json()["top_variables"] == [] and quick.json()["risk"] == body["risk"]
    assert service.client.get("/model").json()["task"] == "in_hospital_death"
    # After the line naming what is served, the log holds one line per request and nothing else:
    # time, method, route template, status, duration. No stay identifier, no value.
    serving, *requests = [line for line in service.log.read_text().splitlines() if line.strip()]
    assert serving.startswith("Serving ") and "POST /predict 200" in "\n".join(requests)
    request_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (GET|POST) /[a-z/{}_]* \d{3} \d+\.\d ms$")
    assert all(request_line.match(line) for line in requests), requests


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"measurements": []}, ["body", "stay_id"], "Field required"),
        ({"stay_id": "a", "measurements": [{"minute": "soon", "variable": "HR", "value": 80}]},
         ["body", "measurements", 0, "minute"], "valid integer"),
        ({"stay_id": "a", "measurements": [{"minute": 5, "variable": "Pulse", "value": 80}]},
         ["body", "measurements", 0, "variable"], "unknown variable 'Pulse'"),
        ({"stay_id": "a", "measurements": [{"minute": 3000, "variable": "HR", "value": 80}]},
         ["body", "measurements", 0, "minute"], "less than or equal to 2880"),
        ({"stay_id": "a", "static": {"ICUType": 7}}, ["body", "static", "ICUType"], "must be one of 1, 2, 3, 4"),
        ({"stay_id": "a", "static": {"Shoe": 42}}, ["body", "static", "Shoe"], "Extra inputs"),
    ],
)  # fmt: skip
def test_a_bad_request_gets_a_422_naming_the_field_and_the_service_goes_on(service, body, field, words):
    answer = service.client.post("/predict", json=body)
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == field and words in error["msg"]
    assert service.client.get("/health").status_code == 200


def test_a_fhir_bundle_gets_the_risk_its_stay_gets_as_json_and_a_bad_one_a_422_where_it_lies(service, cohort):
    for stay_id in cohort.stays.index[:10]:
        stay = _as_json(cohort, int(stay_id))
        stay["measurements"] = [m for m in stay["measurements"] if m["variable"] in MODELLED]
        as_json = service.client.post("/predict", json=stay).json()
        as_fhir = service.client.post("/fhir/predict", json=bundle_of(stay))
        assert as_fhir.status_code == 200, as_fhir.text
        body = as_fhir.json()
        assert body["risk"] == pytest.approx(as_json["risk"], abs=1e-6) and body["stay_id"] == stay["stay_id"]
        assert body["top_variables"] == as_json["top_variables"] and body["observations_skipped"] == {}
    bundle = bundle_of(stay)
    bundle["entry"][-1]["resource"]["effectiveDateTime"] = "yesterday"
    no_encounter = bundle_of(stay) | {"entry": bundle_of(stay)["entry"][1:]}
    for bad, location in ((bundle, ["body", "entry", len(bundle["entry"]) - 1, "resource", "effectiveDateTime"]),
                          (no_encounter, ["body", "entry"]), ({"resourceType": "Patient"}, ["body"])):  # fmt: skip
        answer = service.client.post("/fhir/predict", json=bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"][: len(location)] == location
    assert service.client.get("/health").status_code == 200


def test_without_the_token_every_request_is_refused(service, cohort):
    stay = _as_json(cohort, int(cohort.stays.index[0]))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path, body in (
            ("GET", "/health", None),
            ("POST", "/predict", stay),
            ("POST", "/fhir/predict", {}),
            ("GET", "/monitoring", None),
        ):
            answer = httpx.request(method, service.url + path, json=body, headers=headers)
            assert answer.status_code == 401, (headers, path)
        malformed = httpx.post(service.url + "/predict", content=b"{not json", headers=headers)
        assert malformed.status_code == 401  # refused before anything of the request is read


def test_a_stay_followed_hour_by_hour_keeps_its_trajectory_across_a_restart(run, tmp_path, cohort):
    last_minute = cohort.measurements.groupby("stay_id", observed=True)["minute"].max()
    stay = _as_json(cohort, int(last_minute[last_minute >= 47 * 60].index[0]))  # measured into hour 48
    early = [m for m in stay["measurements"] if m["minute"] < 600]
    late = [m for m in stay["measurements"] if m["minute"] >= 600]
    store = tmp_path / "stays.sqlite"
    with Service(run, tmp_path, store) as first:
        path = "/stays/bed-3/observations"
        assert first.client.post(path, json={"static": stay["static"], "measurements": early}).json()[
            "measurements"
        ] == len(early)
        assert (
            first.client.get("/stays/bed-3/risk").json()["hours"][-1]["hour"]
            == max(m["minute"] for m in early) // 60 + 1
        )
        assert first.client.post(path, json={"measurements": late}).json()["measurements"] == len(stay["measurements"])
        before = first.client.get("/stays/bed-3/risk").json()
        whole = first.client.post("/predict", json=stay).json()
    with Service(run, tmp_path, store) as again:
        after = again.client.get("/stays/bed-3/risk").json()
        assert again.client.get("/stays/bed-4/risk").status_code == 404
    assert after == before
    hours = [h["hour"] for h in after["hours"]]
    assert hours == list(range(1, len(hours) + 1)) and hours[-1] == min(48, max(m["minute"] for m in late) // 60 + 1)
    assert hours[-1] == 48  # the last hour holds every measurement: the risk of the whole stay
    assert after["hours"][-1]["risk"] == pytest.approx(whole["risk"], abs=1e-6)
    crossed = [h["hour"] for h in after["hours"] if h["risk"] >= after["threshold"]]
    assert after["crossed_at_hour"] == (crossed[0] if crossed else None)


def test_monitoring_flags_a_shifted_variable_and_only_that_one(service, cohort):
    for stay_id in cohort.stays.index[:120]:
        stay = _as_json(cohort, int(stay_id))
        for m in stay["measurements"]:
            if m["variable"] == "Temp":
                m["value"] += 2.5  # a thermometer reading 2.5 °C high
        assert service.client.post("/predict", json=stay).status_code == 200
    again = _as_json(cohort, int(cohort.stays.index[0]))
    assert service.client.post("/predict", json=again).status_code == 200  # scored again: counted once, as now
    report = service.client.get("/monitoring").json()
    by_name = {v["variable"]: v for v in report["variables"]}
    assert report["stays"] == 120 and report["flagged"] == ["Temp"]
    assert by_name["Temp"]["stays_measured"] >= 100 and by_name["Temp"]["psi"] > 1
    assert by_name["HR"]["psi"] < 0.2 and "HR" not in report["flagged"]
    assert 0 <= by_name["Lactate"]["missing_share"] <= 1


def test_the_exported_onnx_model_scores_as_pytorch_does_and_can_be_served(run, cohort, predicted, tmp_path):
    report, _ = predicted
    exported = fedicu("export", str(run), "--onnx", str(tmp_path / "model.onnx"))
    assert exported.returncode == 0, exported.stderr
    scorer = OnnxScorer.load(tmp_path / "model.onnx")
    seqs = to_sequences(clean(cohort)[0])
    np.testing.assert_allclose(scorer.risks(seqs), [s["risk"] for s in report["stays"]], atol=1e-5)
    assert scorer.threshold == report["threshold"] and scorer.card["task"] == "in_hospital_death"
    assert len(scorer.risks(seqs.take(np.arange(1)))) == 1  # any number of stays, one included
    (tmp_path / "token").write_text(TOKEN)
    port = _free_port()
    command = [str(FEDICU), "serve", "--onnx", str(tmp_path / "model.onnx"), "--port", str(port),
               "--store", str(tmp_path / "stays.sqlite"), "--token-file", str(tmp_path / "token")]  # fmt: skip
    service = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as client:

            def up() -> bool:
                assert service.poll() is None
                try:
                    return client.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, 120, "the ONNX service answers /health")
            first = report["stays"][0]
            body = client.post("/predict", json=_as_json(cohort, first["stay_id"])).json()
            assert body["risk"] == pytest.approx(first["risk"], abs=1e-5) and body["top_variables"] == []
    finally:
        service.terminate()
        service.wait(timeout=30)
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    refused = fedicu("serve", "--onnx", str(bad))
    assert refused.returncode == 2 and f"--onnx {bad}: not an ONNX model" in refused.stderr


def test_predict_scores_physionet_stays_that_come_without_outcomes(run, tmp_path):
    from tests.test_physionet2012 import copy_fixture

    data_dir = copy_fixture(tmp_path)
    with_outcomes = fedicu("predict", str(run), "--data-dir", str(data_dir), "--sets", "a", "--top", "0", "--json")
    (data_dir / "Outcomes-a.txt").unlink()
    without = fedicu("predict", str(run), "--data-dir", str(data_dir), "--sets", "a", "--top", "0", "--json")
    assert with_outcomes.returncode == 0 and without.returncode == 0, without.stderr
    assert json.loads(without.stdout)["stays"] == json.loads(with_outcomes.stdout)["stays"]
    evaluated = fedicu("evaluate", str(run), "--data-dir", str(data_dir), "--sets", "a")
    assert evaluated.returncode == 2 and "Outcomes-a.txt: outcomes file of set a is missing" in evaluated.stderr
