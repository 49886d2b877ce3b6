"""SCAFFOLD's control variates, as the server keeps them (Karimireddy et al., ICML 2020).

Hospitals whose data differ pull their local models apart ("client drift"). SCAFFOLD corrects
every local gradient by c - c_i: c_i estimates hospital i's own gradient, c the federation's,
so that local training follows the federation's direction rather than the hospital's.

- c_i is option I of the paper: the mean gradient of hospital i's training loss at the global
  model it received, computed at the hospital (`shared.training.mean_gradient`) and sent with
  its weights. Option I assumes no particular local optimizer; fedicu's is Adam.
- c is the average of the latest c_i of every hospital, weighted by training stays like the
  models, so that it is the gradient of the objective FedAvg minimizes.
- The server keeps every c_i and sends each hospital its own correction, so a hospital keeps no
  state between rounds: a restarted site, or a resumed run (the controls are in the
  checkpoint), goes on exactly. A hospital that misses a round keeps its last c_i, as in the
  paper's partial participation. Before any c_i exists every correction is zero: the first
  round is a FedAvg round.
- The model is aggregated by FedAvg (global step size 1).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

Controls = dict[str, torch.Tensor]  # parameter name -> tensor


class ControlVariates:
    """The latest control variate of every hospital, and the corrections they give."""

    def __init__(self, parameters: Controls, stays: dict[str, int], state: dict[str, Controls] | None = None):
        self.zeros = {name: torch.zeros_like(p, requires_grad=False) for name, p in parameters.items()}
        self.stays = stays
        self.own: dict[str, Controls] = dict(state or {})

    def federation(self) -> Controls:
        """c: the stays-weighted mean of the hospitals' latest controls (zeros before any)."""
        if not self.own:
            return self.zeros
        total = sum(self.stays[h] for h in self.own)
        return {
            name: torch.stack([(self.stays[h] / total) * self.own[h][name].double() for h in self.own])
            .sum(0)
            .to(zero.dtype)
            for name, zero in self.zeros.items()
        }

    def correction(self, hospital: str, federation: Controls) -> ArrayRecord:
        """c - c_i for one hospital, as it travels."""
        own = self.own.get(hospital, self.zeros)
        return ArrayRecord({name: federation[name] - own[name] for name in self.zeros})

    def update(self, replies: dict[str, ArrayRecord]) -> None:
        """Take the new c_i of the hospitals whose updates and controls were accepted this round
        (`server.update_checks.control_problems`)."""
        for hospital, control in replies.items():
            self.own[hospital] = control.to_torch_state_dict()

    def state(self) -> dict[str, Controls]:
        return dict(self.own)
