"""The model for edge devices: one ONNX file that holds, beside the network, everything scoring
needs (normalization, decision threshold, variables, task, the weights' SHA-256), and a scorer
that runs it with onnxruntime: no PyTorch on the scoring path.

The network's input is the model input of `shared.preprocessing.to_features`
(`[stays, 48, features]`, float32) and its output the risk (the sigmoid of the LSTM's logit).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedicu.client.bedside.scoring import rows, site_map
from fedicu.shared.calibration import RecalibrationMap
from fedicu.shared.files import atomic_write_bytes
from fedicu.shared.preprocessing import HOURS, Normalization, Sequences, to_features

METADATA = "fedicu"  # the ONNX metadata property holding the JSON below
OPSET = 17


def export(run_dir: Path, out: Path, which: str = "best") -> dict[str, Any]:
    """Write the run's model as ONNX into `out` (atomically); return its metadata."""
    import onnx
    import torch

    from fedicu.shared.model import fingerprint
    from fedicu.shared.run_dir import MODEL_CARD, RunDirectory, load_trained

    model, norm, threshold = load_trained(run_dir, which)
    model.eval()
    card = RunDirectory(run_dir).read_json(MODEL_CARD)
    metadata = {
        "variables": list(model.config.channels), "normalization": norm.to_dict(), "threshold": threshold,
        "task": card["task"], "predicts": card["predicts"], "sha256": fingerprint(model.state_dict()),
        "run": str(run_dir), "model": which,
    }  # fmt: skip

    class Risk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.model(features))

    example = torch.zeros(2, HOURS, model.config.n_features)
    with tempfile.TemporaryDirectory(prefix="fedicu-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the LSTM's batch size is left free: the tests check it scores any
        torch.onnx.export(
            Risk().eval(), (example,), Path(tmp) / "model.onnx", dynamo=False, opset_version=OPSET,
            input_names=["features"], output_names=["risk"],
            dynamic_axes={"features": {0: "stays"}, "risk": {0: "stays"}},
        )  # fmt: skip
        network = onnx.load(Path(tmp) / "model.onnx")
    onnx.helper.set_model_props(network, {METADATA: json.dumps(metadata)})
    onnx.checker.check_model(network)
    atomic_write_bytes(out, network.SerializeToString())
    return metadata


@dataclass(frozen=True)
class OnnxScorer:
    """Scores stays from an exported file with onnxruntime, as `scoring.Scorer` does with the
    run directory (without explanations: integrated gradients need the PyTorch model)."""

    session: Any  # onnxruntime.InferenceSession
    norm: Normalization
    threshold: float  # the map's when there is one
    channels: tuple[str, ...]
    card: dict[str, Any]  # the file's metadata
    sha256: str
    recalibration: RecalibrationMap | None = None

    @staticmethod
    def load(path: Path, recalibration: Path | None = None) -> OnnxScorer:
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"--onnx {path}: not an ONNX model fedicu can run ({error})") from error
        props = session.get_modelmeta().custom_metadata_map
        if METADATA not in props:
            raise ValueError(f"--onnx {path}: no fedicu metadata; export it with fedicu export RUN_DIR --onnx")
        metadata = json.loads(props[METADATA])
        sha = str(metadata["sha256"])
        mapped = site_map(recalibration, sha, str(metadata["model"])) if recalibration else None
        return OnnxScorer(
            session, Normalization.from_dict(metadata["normalization"]),
            mapped.threshold if mapped else float(metadata["threshold"]), tuple(metadata["variables"]), metadata,
            sha, mapped,
        )  # fmt: skip

    def risks(self, seqs: Sequences) -> np.ndarray:
        features = to_features(seqs, self.norm, self.channels)
        if len(features) == 0:
            return np.empty(0)
        (risk,) = self.session.run(["risk"], {"features": features})
        risk = risk.astype(np.float64)
        return self.recalibration.apply(risk) if self.recalibration else risk

    def score(self, seqs: Sequences, top: int = 0) -> list[dict[str, Any]]:
        """Rows as `Scorer.score` gives them, without top variables."""
        risks = self.risks(seqs)
        return rows(seqs, risks, self.threshold, [[] for _ in risks])
