import numpy as np
import pytest
import torch

from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.training import predict, train_epochs


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes(attention, layers):
    model = MortalityLSTM(ModelConfig(n_features=7, hidden_size=16, num_layers=layers, attention=attention))
    logits, weights = model.forward_with_attention(torch.randn(5, 48, 7))
    assert logits.shape == (5,)
    if attention:
        assert weights is not None
        assert weights.shape == (5, 48)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(5))
    else:
        assert weights is None


def test_training_learns_a_simple_signal_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 48, 3)).astype(np.float32)
    y = (x[:, -6:, 0].mean(axis=1) > 0).astype(np.int8)  # label lives in the last hours of channel 0

    def run():
        torch.manual_seed(0)
        model = MortalityLSTM(ModelConfig(n_features=3, hidden_size=16))
        loss = train_epochs(model, x, y, epochs=8, lr=0.01, batch_size=32, seed=1)
        return loss, predict(model, x)

    loss, p = run()
    accuracy = ((p >= 0.5) == y).mean()
    assert accuracy > 0.85 and loss < 0.45
    loss2, p2 = run()
    assert loss == loss2 and np.array_equal(p, p2)


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(n_features=3, dropout=1.5)
