"""What a run needs to continue after its last completed round, as saved in `checkpoint.pt`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedicu.shared.config import RunConfig
from fedicu.shared.preprocessing import Normalization
from fedicu.shared.run_dir import CHECKPOINT, CONFIG_FILE, RunDirectory


@dataclass
class RunState:
    """Everything a run needs to continue after its last completed round."""

    completed: int
    arrays: dict[str, torch.Tensor]
    norm: Normalization
    rows: list[dict] = field(default_factory=list)
    hospital_rows: list[dict] = field(default_factory=list)
    best: dict | None = None
    strategy: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    privacy: dict[str, dict] = field(default_factory=dict)  # hospital -> ledger (DP runs)
    hospital_privacy: dict | None = None  # the server's hospital-level ledger (hospital-level DP)
    controls: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # SCAFFOLD: hospital -> c_i

    def to_checkpoint(self) -> dict:
        return {
            "completed": self.completed,
            "arrays": self.arrays,
            "norm": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.norm.to_dict().items()},
            "rows": self.rows,
            "hospital_rows": self.hospital_rows,
            "best": self.best,
            "strategy": self.strategy,
            "privacy": json.dumps(self.privacy),
            "hospital_privacy": json.dumps(self.hospital_privacy),
            "controls": self.controls,
        }

    @staticmethod
    def from_checkpoint(c: dict) -> RunState:
        norm = Normalization.from_dict({k: v.numpy() for k, v in c["norm"].items()})
        return RunState(
            c["completed"],
            c["arrays"],
            norm,
            c["rows"],
            c["hospital_rows"],
            c["best"],
            c["strategy"],
            json.loads(c["privacy"]),
            json.loads(c["hospital_privacy"]),
            c.get("controls", {}),  # checkpoints from before SCAFFOLD have none
        )


def interrupted_run(path: Path) -> tuple[RunConfig, RunDirectory, RunState | None]:
    """The configuration, directory and last checkpoint of the interrupted run in `path` (no
    checkpoint: it stopped before its first round completed). Raises ValueError if `path` holds
    no run or a complete one."""
    run_dir = RunDirectory(path)
    if not (run_dir.path / CONFIG_FILE).is_file():
        raise ValueError(f"{path}: not a run directory (no {CONFIG_FILE})")
    if run_dir.status == "complete":
        raise ValueError(f"{path}: the run is already complete")
    config = RunConfig.from_flower(run_dir.read_json(CONFIG_FILE))
    checkpoint = run_dir.path / CHECKPOINT
    state = RunState.from_checkpoint(run_dir.load_model(CHECKPOINT)) if checkpoint.is_file() else None
    return config, run_dir, state
