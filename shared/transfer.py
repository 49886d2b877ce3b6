"""Starting a run from a trained model: `--init-from RUN_DIR`, optionally `--freeze-body`.

The new model takes every weight of RUN_DIR's best model that means the same in both: same
name and shape, and for the input weights the same variables (a model reading other variables
gets new input weights). The rest start as a new model's. Its inputs are standardized with the
new run's own statistics, as in any run. With `--freeze-body` only the output head is trained
(`shared.model.freeze_body`), which needs the whole body from RUN_DIR.
"""

from __future__ import annotations

import torch

from fedicu.shared.config import RunConfig, member_seed
from fedicu.shared.model import HEAD, PER_VARIABLE, ModelConfig, MortalityLSTM, transfer_weights
from fedicu.shared.run_dir import load_trained

SAME_SHAPE = (
    ("hidden_size", "--hidden-size"), ("num_layers", "--layers"), ("attention", "--attention"),
    ("input_decay", "--input-decay"),
)  # fmt: skip


def starting_weights(config: RunConfig, model_config: ModelConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights a run starts from (a new model seeded by the run's seed and ensemble member,
    with what fits of `config.init_from`) and the names of those not taken from `config.init_from`."""
    torch.manual_seed(member_seed(config.seed, config.member))
    start = MortalityLSTM(model_config).state_dict()
    if not config.init_from:
        return start, []
    trained, _, _ = load_trained(config.init_from, option="--init-from")
    for field, option in SAME_SHAPE:
        theirs, ours = getattr(trained.config, field), getattr(model_config, field)
        if theirs != ours:
            raise ValueError(
                f"--init-from {config.init_from}: its model has {field.replace('_', ' ')} {theirs}, "
                f"this run asks for {ours} ({option})"
            )
    weights = trained.state_dict()
    if trained.config.channels != model_config.channels:  # same shape, other meaning
        weights = {name: tensor for name, tensor in weights.items() if name not in PER_VARIABLE}
    not_taken = transfer_weights(start, weights)
    body_not_taken = [name for name in not_taken if not name.startswith(HEAD)]
    if config.freeze_body and body_not_taken:
        raise ValueError(
            f"--freeze-body: {', '.join(body_not_taken)} of --init-from {config.init_from} do not fit this model "
            "(it reads other variables), so they would stay frozen at random values"
        )
    return start, not_taken
