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


def test_input_decay_moves_only_unobserved_values_towards_the_mean_by_their_age():
    from fedicu.shared.model import InputDecay

    decay = InputDecay(2)
    with torch.no_grad():
        decay.weight.copy_(torch.tensor([2.0, 0.5]))
        decay.bias.copy_(torch.tensor([-0.5, 0.0]))
    values, observed, since = torch.tensor([3.0, -1.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.75, 0.5])
    others = torch.tensor([7.0, 8.0])
    x = torch.cat([values, observed, since, others]).reshape(1, 1, -1)
    out = decay(x).reshape(-1)
    # variable 0, unmeasured for 0.75 of 48 h: exp(-(2 * 0.75 - 0.5)); variable 1 was measured this hour
    torch.testing.assert_close(out[:2], torch.tensor([3.0 * float(np.exp(-1.0)), -1.0]))
    torch.testing.assert_close(out[2:], x.reshape(-1)[2:])
    with torch.no_grad():
        decay.bias.fill_(-10.0)  # w * since + b < 0: no decay at all
    torch.testing.assert_close(decay(x), x)


def test_input_decay_is_a_model_option_that_leaves_the_plain_model_as_it_was():
    from fedicu.shared.config import RunConfig
    from fedicu.shared.model import model_config_of

    plain = MortalityLSTM(ModelConfig(n_features=3 * 2 + 12, variables="HR,Temp"))
    decaying = MortalityLSTM(ModelConfig(n_features=3 * 2 + 12, variables="HR,Temp", input_decay=True))
    assert set(decaying.state_dict()) - set(plain.state_dict()) == {"decay.weight", "decay.bias"}
    assert decaying.state_dict()["decay.weight"].shape == (2,)
    assert model_config_of(RunConfig(input_decay=True)).input_decay
    with pytest.raises(ValueError, match="--input-decay cannot be combined with --dp"):
        RunConfig(input_decay=True, dp=True, target_epsilon=4.0)
