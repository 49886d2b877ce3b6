"""SCAFFOLD: the server's control variates, the hospitals' mean gradients and corrected steps,
and a run that sends every hospital its own correction and resumes exactly."""

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message
from flwr.clientapp import ClientApp
from torch import nn

from fedicu.client.client_app import app as hospital_app
from fedicu.server.checkpoint import interrupted_run
from fedicu.server.federated_run import LogProgress
from fedicu.server.scaffold import ControlVariates
from fedicu.server.update_checks import control_problems
from fedicu.shared.config import RunConfig
from fedicu.shared.contract import FeatureStatsRequest, TrainReply, TrainRequest
from fedicu.shared.federation import prepare
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.run_dir import CHECKPOINT, RunDirectory
from fedicu.shared.training import mean_gradient, train_epochs
from fedicu.simulations.inprocess import run_in_process


def _controls(w: list[float], b: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.tensor(w), "b": torch.tensor([b])})


def test_the_federations_control_is_the_stays_weighted_mean_and_each_correction_the_difference():
    controls = ControlVariates({"w": torch.ones(2), "b": torch.ones(1)}, {"north": 100, "south": 300, "east": 50})
    assert all(torch.equal(t, torch.zeros_like(t)) for t in controls.federation().values())
    controls.update({"north": _controls([1.0, 2.0], 4.0), "south": _controls([5.0, -2.0], 0.0)})
    federation = controls.federation()  # east has sent none: it does not count
    torch.testing.assert_close(federation["w"], torch.tensor([4.0, -1.0]))
    torch.testing.assert_close(federation["b"], torch.tensor([1.0]))
    north = controls.correction("north", federation).to_torch_state_dict()
    torch.testing.assert_close(north["w"], torch.tensor([3.0, -3.0]))
    east = controls.correction("east", federation).to_torch_state_dict()  # c - 0
    torch.testing.assert_close(east["b"], torch.tensor([1.0]))
    again = ControlVariates({"w": torch.ones(2), "b": torch.ones(1)}, controls.stays, controls.state())
    torch.testing.assert_close(again.federation()["w"], federation["w"])


def test_a_control_variate_that_is_missing_misshapen_or_not_finite_rejects_that_hospital_alone():
    model = ArrayRecord({"w": torch.ones(2), "b": torch.ones(1)})
    problems = control_problems(
        {"none": None, "shape": _controls([1.0, 2.0, 3.0], 0.0), "nan": _controls([float("nan"), 0.0], 0.0),
         "good": _controls([0.5, -0.5], 0.1)},
        model,
    )  # fmt: skip
    assert sorted(problems) == ["nan", "none", "shape"]
    assert problems["nan"] == "control variate rejected: w holds NaN or infinite values"
    assert problems["none"] == "control variate rejected: no SCAFFOLD control variate sent"


def _model_and_data(seed: int = 0) -> tuple[MortalityLSTM, np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MortalityLSTM(ModelConfig(n_features=5, hidden_size=8))
    x = rng.normal(size=(50, 6, 5)).astype(np.float32)
    return model, x, (rng.random(50) < 0.3).astype(np.float64)


def test_the_mean_gradient_is_the_full_batch_gradient_whatever_the_batch_size():
    model, x, y = _model_and_data()
    small, large = mean_gradient(model, x, y, batch_size=7), mean_gradient(model, x, y, batch_size=1000)
    model.eval()
    nn.BCEWithLogitsLoss()(model(torch.from_numpy(x)), torch.from_numpy(y.astype(np.float32))).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(small[name], parameter.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(large[name], parameter.grad, atol=1e-6, rtol=1e-5)
    assert torch.linalg.norm(large["head.weight"]) > 0


def test_a_zero_correction_trains_as_none_and_a_large_one_steers_every_step():
    trained = {}
    for case in ("none", "zero", "bias"):
        model, x, y = _model_and_data()
        start = float(model.head.bias.detach())
        correction = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        correction["head.bias"] -= 100.0 if case == "bias" else 0.0  # against the data's pull, downwards
        train_epochs(model, x, y, epochs=2, lr=0.01, batch_size=10, seed=3,
                     correction=None if case == "none" else correction)  # fmt: skip
        trained[case] = model.state_dict()
    assert all(torch.equal(trained["none"][k], trained["zero"][k]) for k in trained["none"])
    assert float(trained["none"]["head.bias"]) < start
    # Adam moves a parameter by lr per step under a dominating gradient: 10 steps of 0.01, upwards.
    assert float(trained["bias"]["head.bias"]) - start == pytest.approx(0.1, abs=0.005)


SMALL: dict[str, Any] = dict(hospitals=3, synthetic_stays=600, rounds=3, seed=5, hidden_size=16, strategy="scaffold")


def _spy(seen: list[tuple[TrainReply, TrainRequest]], fail_round: int = 0) -> ClientApp:
    """The hospital app recording each train request with the hospital's reply; from
    `fail_round` on, every hospital fails its training."""
    app = ClientApp()

    @app.query(FeatureStatsRequest.action)
    def stats(msg, context):
        return hospital_app(msg, context)

    @app.train()
    def train(msg: Message, context):
        request = TrainRequest.from_content(msg.content)
        if fail_round and request.server_round >= fail_round:
            raise RuntimeError("the site went down")
        reply = hospital_app(msg, context)
        seen.append((TrainReply.from_content(reply.content), request))
        return reply

    @app.evaluate()
    def evaluate(msg, context):
        return hospital_app(msg, context)

    @app.query("cross_site")
    def cross_site(msg, context):
        return hospital_app(msg, context)

    return app


def _run(run_dir: RunDirectory, app, resume=None) -> None:
    config = RunConfig(**SMALL)
    run_in_process(config, prepare(config), run_dir, LogProgress(), client_app=app, resume=resume)


def test_each_hospital_gets_its_own_correction_and_they_cancel_out_over_the_federation(tmp_path):
    seen: list[tuple[TrainReply, TrainRequest]] = []
    run_dir = RunDirectory(tmp_path / "run").create()
    _run(run_dir, _spy(seen))
    assert run_dir.status == "complete" and len(seen) == 9
    assert sorted(run_dir.load_model(CHECKPOINT)["controls"]) == sorted({reply.hospital for reply, _ in seen})
    first = [r.correction.to_torch_state_dict() for _, r in seen[:3] if r.correction is not None]
    assert len(first) == 3 and all(torch.count_nonzero(t) == 0 for c in first for t in c.values())
    second = [(reply.train_stays, r.correction.to_torch_state_dict()) for reply, r in seen[3:6] if r.correction]
    assert len(second) == 3 and all(reply.control is not None for reply, _ in seen)
    total_stays = sum(stays for stays, _ in second)
    for name in second[0][1]:
        assert not torch.allclose(second[0][1][name], second[1][1][name])
        # sum_i w_i (c - c_i) = c - c = 0, with c the stays-weighted mean of the c_i
        total = torch.stack([stays / total_stays * correction[name].double() for stays, correction in second]).sum(0)
        torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-6, rtol=0)


def test_a_resumed_scaffold_run_ends_as_an_uninterrupted_one_and_needs_its_controls(tmp_path):
    reference = RunDirectory(tmp_path / "reference").create()
    _run(reference, hospital_app)
    interrupted = RunDirectory(tmp_path / "interrupted").create()
    with pytest.raises(RuntimeError, match="round 3 training"):
        _run(interrupted, _spy([], fail_round=3))
    _, _, state = interrupted_run(interrupted.path)
    assert state is not None and state.completed == 2 and len(state.controls) == 3
    forgetful = RunDirectory(tmp_path / "forgetful").create()
    _run(forgetful, hospital_app, resume=replace(state, controls={}))
    _run(interrupted, hospital_app, resume=interrupted_run(interrupted.path)[2])

    def rows(run_dir: RunDirectory) -> list[dict]:  # without the rounds' durations
        return [{k: v for k, v in row.items() if k != "seconds"} for row in run_dir.read_json("metrics.json")]

    assert rows(interrupted) == rows(reference)
    assert rows(forgetful)[-1]["test_auroc"] != rows(reference)[-1]["test_auroc"]


def test_scaffold_refuses_dp_sgd_naming_why():
    with pytest.raises(ValueError, match="--strategy scaffold cannot be combined with --dp"):
        RunConfig(strategy="scaffold", dp=True, target_epsilon=4.0)
