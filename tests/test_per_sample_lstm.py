import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from sklearn.metrics import roc_auc_score

from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.privacy.per_sample_lstm import (
    PerSampleLSTM,
    PoissonSchedule,
    check_dp_model,
    grad_sample_recording,
    make_dp_model,
    private_step,
    to_dp_model,
    train_epochs_dp,
)
from fedicu.shared.training import predict

LAYOUTS = [(1, False), (1, True), (2, False), (2, True)]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is as fast and does not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair(layers, attention, *, dropout=0.0, n_features=3, hidden=4, dtype=torch.float64, seed=0):
    """A plain MortalityLSTM and its per-stay-gradient twin with identical weights."""
    torch.manual_seed(seed)
    config = ModelConfig(
        n_features=n_features, hidden_size=hidden, num_layers=layers, dropout=dropout, attention=attention
    )
    plain = MortalityLSTM(config).to(dtype)
    return plain, to_dp_model(copy.deepcopy(plain))


def batch(n=5, hours=6, features=3, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, hours, features, generator=g, dtype=dtype)
    y = (torch.rand(n, generator=g) < 0.5).to(dtype)
    return x, y


def per_stay_reference(model, x, y):
    """Brute force: one forward and backward pass per stay, batch size 1."""
    names = [n for n, _ in model.named_parameters()]
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for j in range(len(x)):
        loss = F.binary_cross_entropy_with_logits(model(x[j : j + 1]), y[j : j + 1], reduction="sum")
        for n, g in zip(names, torch.autograd.grad(loss, list(model.parameters())), strict=True):
            grads[n].append(g)
    return {n: torch.stack(g) for n, g in grads.items()}


def recorded(model, x, y):
    with grad_sample_recording(model):
        F.binary_cross_entropy_with_logits(model(x), y, reduction="sum").backward()
    out = {n: p.grad_sample for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad_sample = None
    return out


@pytest.mark.parametrize("layers,attention", LAYOUTS)
def test_forward_and_state_dict_match_the_plain_model(layers, attention):
    plain, dp = pair(layers, attention, n_features=7, hidden=16, dtype=torch.float32, dropout=0.3)
    assert isinstance(dp.lstm, PerSampleLSTM)
    assert list(plain.state_dict()) == list(dp.state_dict())
    assert all(a.shape == b.shape for a, b in zip(plain.state_dict().values(), dp.state_dict().values(), strict=True))
    plain.eval(), dp.eval()
    x = torch.randn(9, 48, 7)
    (out_p, (h_p, c_p)), (out_d, (h_d, c_d)) = plain.lstm(x), dp.lstm(x)
    for a, b in [(out_p, out_d), (h_p, h_d), (c_p, c_d)]:
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    (logit_p, w_p), (logit_d, w_d) = plain.forward_with_attention(x), dp.forward_with_attention(x)
    torch.testing.assert_close(logit_d, logit_p, atol=1e-5, rtol=0)
    if attention:
        torch.testing.assert_close(w_d, w_p, atol=1e-5, rtol=0)
    # federated averaging mixes the two kinds of model: state dicts load both ways
    fresh = MortalityLSTM(plain.config)
    fresh.load_state_dict(dp.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), logit_d, atol=1e-5, rtol=0)
    other = make_dp_model(plain.config)
    other.load_state_dict(plain.state_dict())
    other.eval()
    torch.testing.assert_close(other(x), logit_p, atol=1e-5, rtol=0)


def test_make_dp_model_starts_from_the_same_weights_as_the_plain_model():
    config = ModelConfig(n_features=5, hidden_size=8, num_layers=2, attention=True)
    torch.manual_seed(3)
    plain = MortalityLSTM(config)
    torch.manual_seed(3)
    dp = make_dp_model(config)
    for a, b in zip(plain.state_dict().values(), dp.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    again = to_dp_model(copy.deepcopy(dp))  # converting a converted model is harmless
    assert isinstance(again.lstm, PerSampleLSTM)
    for a, b in zip(again.state_dict().values(), dp.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("with_state", [False, True])
def test_ordinary_gradients_match_nn_lstm(with_state):
    plain, dp = pair(2, False, n_features=5, hidden=8)
    x = torch.randn(4, 7, 5, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weights = torch.randn(4, 7, 8, dtype=torch.float64)
    grads = []
    for lstm in (plain.lstm, dp.lstm):
        out, (h_n, c_n) = lstm(x, hx) if with_state else lstm(x)
        loss = (out * weights).sum() + (h_n**2).sum() + (c_n**3).sum()
        inputs = [x, *hx] if with_state else [x]
        grads.append(torch.autograd.grad(loss, inputs + list(lstm.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=0)


@pytest.mark.parametrize("layers,attention", LAYOUTS)
def test_per_stay_gradients_equal_brute_force(layers, attention):
    plain, dp = pair(layers, attention)
    plain.eval(), dp.eval()
    x, y = batch()
    expected = per_stay_reference(plain, x, y)
    got = recorded(dp, x, y)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == (len(x), *dict(dp.named_parameters())[name].shape)
        assert (got[name] - expected[name]).abs().max() <= 1e-5, name


@pytest.mark.parametrize("layers,attention", [(1, True), (2, True)])
def test_per_stay_gradients_are_exact_with_dropout_masks(layers, attention):
    """Training mode: same masks (same seed), per-stay losses differentiated one by one."""
    _, dp = pair(layers, attention, dropout=0.5)
    dp.train()
    x, y = batch(n=6)
    params = list(dp.parameters())
    torch.manual_seed(11)
    logits = dp(x)
    losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    per_stay = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
    expected = [torch.stack(g) for g in zip(*per_stay, strict=True)]
    torch.manual_seed(11)
    with grad_sample_recording(dp):
        logits_again = dp(x)
        F.binary_cross_entropy_with_logits(logits_again, y, reduction="sum").backward()
    assert torch.equal(logits, logits_again)  # the same dropout masks
    for p, e in zip(params, expected, strict=True):
        assert p.grad is None
        assert (p.grad_sample - e).abs().max() <= 1e-5


def test_a_second_backward_without_zero_grad_is_refused():
    _, dp = pair(1, False)
    x, y = batch()
    with grad_sample_recording(dp):
        F.binary_cross_entropy_with_logits(dp(x), y, reduction="sum").backward()
        with pytest.raises(RuntimeError, match="zero_grad"):
            F.binary_cross_entropy_with_logits(dp(x), y, reduction="sum").backward()


def test_reused_buffers_refuse_a_stale_backward_and_are_not_copied():
    _, dp = pair(1, False)
    x, y = batch()
    with grad_sample_recording(dp):
        first = F.binary_cross_entropy_with_logits(dp(x), y, reduction="sum")
        dp(x + 1)  # overwrites the buffers the first graph saved
        with pytest.raises(RuntimeError, match="inplace"):
            first.backward()
    assert copy.deepcopy(dp).lstm._workspaces[0]._flat == {}


def dp_optimizer(model, *, noise=0.0, clip=1e9, expected_batch_size, lr=0.1, generator=None):
    return DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr),
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
    )


@pytest.mark.parametrize("attention", [False, True])
def test_no_noise_huge_clip_dp_step_is_a_plain_mean_gradient_step(attention):
    plain, dp = pair(1, attention)
    plain.eval(), dp.eval()
    x, y = batch(n=8)
    optimizer = dp_optimizer(dp, expected_batch_size=8)
    with grad_sample_recording(dp):
        private_step(dp, optimizer, x, y)
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1)
    F.binary_cross_entropy_with_logits(plain(x), y).backward()  # mean over the batch
    sgd.step()
    for (name, a), b in zip(plain.named_parameters(), dp.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=0, msg=name)


def test_dp_gradient_divides_the_poisson_batch_sum_by_the_expected_batch_size():
    plain, dp = pair(1, True)
    plain.eval(), dp.eval()
    x, y = batch(n=40)
    schedule = PoissonSchedule.of(40, 8)
    assert (schedule.sample_rate, schedule.steps_per_epoch, schedule.expected_batch_size) == (0.2, 5, 8.0)
    sampler = UniformWithReplacementSampler(
        num_samples=40, sample_rate=schedule.sample_rate, generator=torch.Generator().manual_seed(4)
    )
    indices = next(iter(sampler))
    assert 0 < len(indices) != 8  # the drawn batch size differs from the expected one
    optimizer = dp_optimizer(dp, expected_batch_size=schedule.expected_batch_size, lr=0.0)
    with grad_sample_recording(dp):
        private_step(dp, optimizer, x[indices], y[indices])
    F.binary_cross_entropy_with_logits(plain(x[indices]), y[indices]).backward()
    for a, b in zip(plain.parameters(), dp.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad * len(indices) / 8, atol=1e-12, rtol=0)


def test_tiny_clip_norm_clips_every_stay():
    plain, dp = pair(2, True)
    plain.eval(), dp.eval()
    x, y = batch(n=7)
    clip = 1e-3
    reference = per_stay_reference(plain, x, y)
    flat = torch.cat([g.reshape(len(x), -1) for g in reference.values()], dim=1)
    norms = flat.norm(dim=1)
    assert (norms > 100 * clip).all()
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    optimizer = dp_optimizer(dp, clip=clip, expected_batch_size=7, lr=0.0)
    with grad_sample_recording(dp):
        private_step(dp, optimizer, x, y)
    total_sq = 0.0
    for (name, p), g in zip(dp.named_parameters(), reference.values(), strict=True):
        expected = torch.einsum("b,b...->...", factors, g) / 7
        torch.testing.assert_close(p.grad, expected, atol=1e-12, rtol=0, msg=name)
        total_sq += float((p.grad**2).sum())
    assert math.sqrt(total_sq) <= len(x) * clip / 7 + 1e-12


def test_proximal_term_is_added_after_privatization():
    plain, dp = pair(1, False)
    plain.eval(), dp.eval()
    x, y = batch(n=6)
    start = [p.detach() + 0.5 for p in dp.parameters()]
    optimizer = dp_optimizer(dp, expected_batch_size=6, lr=0.0)
    with grad_sample_recording(dp):
        private_step(dp, optimizer, x, y, proximal=(0.3, start))
    F.binary_cross_entropy_with_logits(plain(x), y).backward()
    for a, b, s in zip(plain.parameters(), dp.parameters(), start, strict=True):
        torch.testing.assert_close(b.grad, a.grad + 0.3 * (a.detach() - s), atol=1e-12, rtol=0)


def test_an_empty_poisson_batch_still_steps_on_noise_and_is_accounted():
    _, dp = pair(1, True)
    before = [p.detach().clone() for p in dp.parameters()]
    accountant = RDPAccountant()
    empty_x, empty_y = torch.empty(0, 6, 3, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    optimizer = dp_optimizer(dp, expected_batch_size=4, lr=0.0)
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=0.25))
    assert private_step(dp, optimizer, empty_x, empty_y) == 0.0
    for p in dp.parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))
    noisy = dp_optimizer(
        dp, noise=1.0, clip=2.0, expected_batch_size=4, lr=1.0, generator=torch.Generator().manual_seed(0)
    )
    noisy.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=0.25))
    private_step(dp, noisy, empty_x, empty_y)
    assert accountant.history == [(0.0, 0.25, 1), (1.0, 0.25, 1)]
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, dp.parameters(), strict=True)])
    assert 0.3 < float(step.std()) < 0.7  # noise of std sigma * C / expected batch size = 0.5


def toy_task(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 48, 3)).astype(np.float32)
    y = (x[:, -6:, 0].mean(axis=1) > 0).astype(np.int8)  # the label lives in the last hours of channel 0
    return x, y


def test_accountant_matches_a_fresh_rdp_accountant():
    x, y = toy_task(n=100)
    accountant = RDPAccountant()
    model = make_dp_model(ModelConfig(n_features=3, hidden_size=4))
    for round_seed in range(2):  # one accountant across federated rounds
        train_epochs_dp(
            model,
            x,
            y,
            epochs=2,
            lr=0.01,
            batch_size=20,
            seed=round_seed,
            noise_multiplier=1.3,
            max_grad_norm=1.0,
            accountant=accountant,
        )
    steps = 2 * 2 * 5
    assert accountant.history == [(1.3, 0.2, steps)]
    fresh = RDPAccountant()
    for _ in range(steps):
        fresh.step(noise_multiplier=1.3, sample_rate=0.2)
    assert accountant.get_epsilon(1e-5) == fresh.get_epsilon(1e-5)
    assert 0 < accountant.get_epsilon(1e-5) < math.inf


def test_training_is_seeded_and_rejects_models_without_per_stay_gradients():
    x, y = toy_task(n=120)
    config = ModelConfig(n_features=3, hidden_size=8, attention=True)

    def run(seed):
        torch.manual_seed(0)
        model = make_dp_model(config)
        loss = train_epochs_dp(
            model,
            x,
            y,
            epochs=2,
            lr=0.01,
            batch_size=16,
            seed=seed,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=RDPAccountant(),
        )
        return loss, model.state_dict()

    (loss_a, state_a), (loss_b, state_b), (loss_c, state_c) = run(5), run(5), run(6)
    assert loss_a == loss_b and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert loss_a != loss_c and not all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    with pytest.raises(ValueError, match="make_dp_model"):
        check_dp_model(MortalityLSTM(config))


def test_training_with_modest_noise_learns_a_simple_signal():
    x, y = toy_task(n=600)
    x_test, y_test = toy_task(n=400, seed=1)
    torch.manual_seed(0)
    model = make_dp_model(ModelConfig(n_features=3, hidden_size=16))
    accountant = RDPAccountant()
    train_epochs_dp(
        model,
        x,
        y,
        epochs=8,
        lr=0.02,
        batch_size=60,
        seed=0,
        noise_multiplier=0.7,
        max_grad_norm=1.0,
        accountant=accountant,
    )
    assert roc_auc_score(y_test, predict(model, x_test)) > 0.8
    assert accountant.get_epsilon(1e-5) < 50


def test_training_takes_every_planned_step_even_on_empty_poisson_batches():
    from fedicu.shared.privacy.per_sample_lstm import _generators

    x, y = toy_task(n=4)
    schedule = PoissonSchedule.of(4, 1)  # q = 1/4: a batch is empty with probability (3/4)^4
    sampler = UniformWithReplacementSampler(
        num_samples=4, sample_rate=schedule.sample_rate, generator=_generators(2, False)[0], steps=4
    )
    sizes = [len(b) for _ in range(3) for b in sampler]
    assert 0 in sizes  # this seed does draw empty batches
    accountant = RDPAccountant()
    model = make_dp_model(ModelConfig(n_features=3, hidden_size=4))
    loss = train_epochs_dp(
        model,
        x,
        y,
        epochs=3,
        lr=0.01,
        batch_size=1,
        seed=2,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=accountant,
    )
    assert accountant.history == [(1.0, 0.25, 12)]
    assert math.isfinite(loss) or sizes[-4:] == [0, 0, 0, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
