"""The aggregation strategies a run can choose, all from Flower's Message API.

Hospital-level (central) DP wraps FedAvg or FedProx in Flower's
`DifferentialPrivacyServerSideFixedClipping`: the server clips each hospital's
update (new weights minus the global weights) to L2 norm `hospital_dp_clip` (C),
averages the hospitals equally and adds Gaussian noise of standard deviation
z * C / n to every weight (z = `hospital_dp_noise`, n hospitals). Privacy unit:
one hospital (all its stays). Each round is a Gaussian mechanism on the sum of
clipped updates with noise multiplier z (every hospital takes part: no sampling
amplification), composed over rounds by the server's accountant. It protects the
released global models against anyone but the server, which sees the raw updates.
Flower draws that noise from NumPy's global generator, unseeded: such runs do not
reproduce exactly, and a resumed one continues with fresh noise.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fedicu.shared.config import RunConfig
from fedicu.shared.contract import ARRAYS, CONFIG, WEIGHT

# Under hospital-level DP every hospital weighs the same: a weight by stays would let a large
# hospital move the average by more than C / n, the sensitivity the noise is calibrated for.
EQUAL_WEIGHT = "equal-weight"


ROBUST = ("fedmedian", "trimmed-mean", "krum")
TRIMMED = 0.2  # trimmed-mean: the share of hospitals cut at each end, per weight


def trimmed_share(hospitals: int) -> float:
    """`TRIMMED`, raised so that one hospital is cut at each end once there are three."""
    if hospitals < 3:
        return 0.0
    return max(TRIMMED, 1.0 / hospitals + 1e-9)


def fit_to_replies(strategy: Strategy, replies: int) -> None:
    """Trim by the hospitals that replied this round, not by those planned: with one missing,
    the planned share would cut none of them."""
    if isinstance(strategy, FedTrimmedAvg):
        strategy.beta = trimmed_share(replies)


def krum_tolerance(hospitals: int) -> int:
    """The most malicious hospitals Krum's guarantee allows among `hospitals` (n >= 2f + 3)."""
    return max(0, (hospitals - 3) // 2)


def make_strategy(config: RunConfig, hospitals: int) -> Strategy:
    """FedAvg weighted by training stays; FedProx adds a proximal term at the
    hospitals; FedAdam applies Adam on the server to the averaged update.
    With `hospital_dp_noise`, FedAvg or FedProx inside Flower's central-DP wrapper.

    Robust to a hospital that sends a harmful model, at some cost in accuracy when none does:
    FedMedian takes each weight's median over hospitals; trimmed-mean averages each weight
    after cutting the highest and lowest `trimmed_share(n)` of the values; Krum keeps the one hospital's model nearest to the others'
    (tolerating `krum_tolerance(n)` bad ones). They weigh every hospital alike, not by stays."""
    sampling: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=hospitals,
        min_evaluate_nodes=hospitals,
        min_available_nodes=hospitals,
        # the contract's record names, so that a strategy reads what the hospitals send
        arrayrecord_key=ARRAYS,
        configrecord_key=CONFIG,
        weighted_by_key=WEIGHT,
    )
    if config.hospital_dp_noise:
        sampling["weighted_by_key"] = EQUAL_WEIGHT
        inner = (
            FedProx(**sampling, proximal_mu=config.proximal_mu) if config.strategy == "fedprox" else FedAvg(**sampling)
        )
        return DifferentialPrivacyServerSideFixedClipping(
            inner, config.hospital_dp_noise, config.hospital_dp_clip, num_sampled_clients=hospitals
        )
    if config.strategy in ("fedavg", "scaffold"):  # SCAFFOLD averages models as FedAvg (server/scaffold.py)
        return FedAvg(**sampling)
    if config.strategy == "fedprox":
        return FedProx(**sampling, proximal_mu=config.proximal_mu)
    if config.strategy == "fedadam":
        return FedAdam(**sampling, eta=config.server_lr, eta_l=config.lr, beta_1=0.9, beta_2=0.99)
    if config.strategy in ROBUST and hospitals < 3:
        raise ValueError(
            f"--strategy {config.strategy} needs at least 3 hospitals to outvote one; this run has {hospitals}"
        )
    if config.strategy == "fedmedian":
        return FedMedian(**sampling)
    if config.strategy == "trimmed-mean":
        return FedTrimmedAvg(**sampling, beta=trimmed_share(hospitals))
    if config.strategy == "krum":
        return Krum(**sampling, num_malicious_nodes=krum_tolerance(hospitals))
    raise ValueError(f"unknown --strategy {config.strategy!r}")
