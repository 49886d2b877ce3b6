"""The aggregation strategies a run can choose, all from Flower's Message API."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from shared.config import RunConfig


def make_strategy(config: RunConfig, hospitals: int) -> Strategy:
    """FedAvg weighted by training stays; FedProx adds a proximal term at the
    hospitals; FedAdam applies Adam on the server to the averaged update."""
    sampling = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=hospitals,
        min_evaluate_nodes=hospitals,
        min_available_nodes=hospitals,
    )
    if config.strategy == "fedavg":
        return FedAvg(**sampling)
    if config.strategy == "fedprox":
        return FedProx(**sampling, proximal_mu=config.proximal_mu)
    if config.strategy == "fedadam":
        return FedAdam(**sampling, eta=config.server_lr, eta_l=config.lr, beta_1=0.9, beta_2=0.99)
    raise ValueError(f"unknown --strategy {config.strategy!r}")
