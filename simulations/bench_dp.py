"""Time one training epoch of the mortality LSTM with and without DP-SGD on the CPU.

    python -m fedicu.simulations.bench_dp [--repeats 5] [--threads N] [--json]

One epoch over 2,048 random sequences (48 hours, 74 features), hidden size 64, one layer,
batch size 64 (32 steps), for four settings:

- `plain`: the project's non-private loop (`shared.training.train_epochs`) with nn.LSTM;
- `opacus_dplstm`: the same loop with Opacus's DPLSTM in place of nn.LSTM (no DP);
- `opacus_dplstm_dp`: Opacus's DPLSTM trained with DP-SGD through Opacus's PrivacyEngine
  (GradSampleModule hooks, Poisson sampling, DPOptimizer);
- `per_sample_dp`: `shared.privacy.per_sample_lstm.train_epochs_dp` (PerSampleLSTM, Poisson
  sampling, Opacus's DPOptimizer and RDP accountant).

Settings run round-robin (after one warm-up epoch each) and the median of the repeats is
reported; `dp_over_plain_epoch_ratio` is per_sample_dp / plain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.layers import DPLSTM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.privacy.per_sample_lstm import make_dp_model, train_epochs_dp
from fedicu.shared.training import train_epochs

N_SEQUENCES, HOURS, FEATURES, HIDDEN, BATCH = 2048, 48, 74, 64, 64
LR, NOISE, CLIP = 1e-3, 1.0, 1.0
CONFIG = ModelConfig(n_features=FEATURES, hidden_size=HIDDEN, num_layers=1)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_SEQUENCES, HOURS, FEATURES)).astype(np.float32)
    y = (rng.random(N_SEQUENCES) < 0.14).astype(np.int8)
    return x, y


def _dplstm_model() -> MortalityLSTM:
    model = MortalityLSTM(CONFIG)
    model.lstm = DPLSTM(FEATURES, HIDDEN, num_layers=1, batch_first=True)
    return model


def _plain(x, y, repeat):
    model = MortalityLSTM(CONFIG)
    return lambda: train_epochs(model, x, y, epochs=1, lr=LR, batch_size=BATCH, seed=repeat)


def _opacus_dplstm(x, y, repeat):
    model = _dplstm_model()
    return lambda: train_epochs(model, x, y, epochs=1, lr=LR, batch_size=BATCH, seed=repeat)


def _opacus_dplstm_dp(x, y, repeat):
    torch.manual_seed(repeat)
    model = _dplstm_model()
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)))
    loader = DataLoader(dataset, batch_size=BATCH)
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        data_loader=loader,
        noise_multiplier=NOISE,
        max_grad_norm=CLIP,
        poisson_sampling=True,
    )
    loss_fn = nn.BCEWithLogitsLoss()

    def epoch():
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimizer.step()

    return epoch


def _per_sample_dp(x, y, repeat):
    model = make_dp_model(CONFIG)
    accountant = RDPAccountant()
    return lambda: train_epochs_dp(
        model,
        x,
        y,
        epochs=1,
        lr=LR,
        batch_size=BATCH,
        seed=repeat,
        noise_multiplier=NOISE,
        max_grad_norm=CLIP,
        accountant=accountant,
    )


SETTINGS = {
    "plain": ("nn.LSTM, no DP", _plain),
    "opacus_dplstm": ("Opacus DPLSTM, no DP", _opacus_dplstm),
    "opacus_dplstm_dp": ("Opacus DPLSTM, DP-SGD", _opacus_dplstm_dp),
    "per_sample_dp": ("PerSampleLSTM, DP-SGD", _per_sample_dp),
}


def run(repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", module="opacus")  # secure-RNG and backward-hook notices
    warnings.filterwarnings("ignore", message="Full backward hook")
    x, y = _data()
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for repeat in range(repeats + 1):  # repeat 0 warms up
        for name, (_, make) in SETTINGS.items():
            epoch = make(x, y, repeat)
            start = time.perf_counter()
            epoch()
            elapsed = time.perf_counter() - start
            if repeat:
                times[name].append(elapsed)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "sequences": N_SEQUENCES,
        "hours": HOURS,
        "features": FEATURES,
        "hidden_size": HIDDEN,
        "layers": 1,
        "batch_size": BATCH,
        "noise_multiplier": NOISE,
        "max_grad_norm": CLIP,
        "threads": threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before, after: other work skews times
        "epoch_seconds": {name: {"median": medians[name], "runs": times[name]} for name in SETTINGS},
        "over_plain": {name: medians[name] / medians["plain"] for name in SETTINGS},
        "dp_over_plain_epoch_ratio": medians["per_sample_dp"] / medians["plain"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    result = run(args.repeats, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"one epoch: {N_SEQUENCES} sequences x {HOURS} h x {FEATURES} features, hidden {HIDDEN}, "
        f"batch {BATCH}, {args.threads} threads, median of {args.repeats}; "
        "load average %.1f before, %.1f after" % tuple(result["load_average_1min"])
    )
    print(f"{'setting':<24} {'median s':>9} {'min s':>7} {'x plain':>8}")
    for name, (label, _) in SETTINGS.items():
        seconds = result["epoch_seconds"][name]
        ratio = result["over_plain"][name]
        print(f"{label:<24} {seconds['median']:>9.3f} {min(seconds['runs']):>7.3f} {ratio:>8.2f}")
    print(f"dp_over_plain_epoch_ratio = {result['dp_over_plain_epoch_ratio']:.2f}")


if __name__ == "__main__":
    main()
