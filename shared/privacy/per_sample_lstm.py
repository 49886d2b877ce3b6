"""DP-SGD for the mortality LSTM with exact per-stay gradients from one backward pass.

Privacy unit and guarantee
--------------------------
The privacy unit is one ICU stay: one row of the hospital's training array `x` (its hourly
sequence) together with its label. `train_epochs_dp` gives sample-level
(epsilon, delta)-differential privacy for the hospital's training stays with respect to adding
or removing one stay: every step draws a Poisson batch (each stay independently with
probability q), clips each stay's gradient of its own loss to L2 norm at most C over *all*
trainable parameters jointly, sums the clipped gradients and adds Gaussian noise with standard
deviation sigma * C to every coordinate (the sampled Gaussian mechanism). The epsilon for a
given delta is what the privacy accountant computes from (sigma, q, number of steps taken,
empty batches included); the accountant is passed in by the caller and keeps counting across
calls, so one accountant per hospital (or the same history replayed into a fresh one) covers
all federated rounds of that hospital. Releasing the trained weights is post-processing.

What the guarantee does not cover: the training loss returned by `train_epochs_dp` (computed
from the raw stays, not privatized), anything else computed from the training stays outside
these steps (normalization statistics, decision thresholds, validation metrics), and the size
of the training set (q is derived from it). A patient with several stays is protected only
through group privacy (k stays: roughly k * epsilon). With `secure_mode=False` the noise and
the Poisson batches are reproducible from `seed`: anyone who knows the seed can regenerate the
noise, subtract it and see which stays each step used, so in that mode the guarantee holds
only while the seed stays secret; it exists for reproducible experiments.

How the per-stay gradients are computed
---------------------------------------
`PerSampleLSTM` is a drop-in for `nn.LSTM(batch_first=True)` (same parameter names, shapes and
order, same forward math) whose layers are a custom autograd function: the forward pass
computes the input projection of all hours in one matrix product and runs the recurrence with a
handful of in-place kernels per hour; the backward pass runs the recurrence backwards by hand
and keeps the gradients of the loss with respect to the gate pre-activations, delta_t
(`[time, batch, 4 * hidden]`). Each stay's parameter gradients are then single batched
contractions: dW_ih = sum_t delta_t x_t^T, dW_hh = sum_t delta_t h_{t-1}^T and
db_ih = db_hh = sum_t delta_t. `PerSampleLinear` does the same for the attention scorer and the
output head (per-stay outer products of inputs and output gradients, summed over hours).

The per-hour loops run on one intra-op thread and, while recording, large temporaries live in
per-layer buffers reused from step to step (see `_one_thread` and `_Workspace`).

With per-stay recording on (`grad_sample_recording`), a backward pass stores each trainable
parameter's per-stay gradients as `param.grad_sample` (`[batch, *param.shape]`), the layout
Opacus's `DPOptimizer` reads; it then clips, sums, adds noise, scales and steps, and its step
hook advances the accountant. Per-stay gradients are exact because no operation of the model
mixes stays (no batch normalization); dropout masks are per element and therefore per stay.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus.accountants import IAccountant
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fedicu.shared.compat import store_grad_sample
from fedicu.shared.model import ModelConfig, MortalityLSTM
from fedicu.shared.training import torch_threads


def _one_thread():
    """Run the per-hour loops on one intra-op thread.

    Their matrix products are tiny ([batch, H] x [H, 4H]); splitting each across threads gains
    little on an idle machine, and when other processes keep the cores busy every split waits
    for a descheduled worker (milliseconds per product, hundreds of products per step).
    """
    return torch_threads(1)


class _Workspace:
    """Buffers one LSTM layer reuses from step to step while recording per-stay gradients.

    A DP step needs tens of megabytes of temporaries (gate activations, gate gradients,
    per-stay gradients: some 30 MB for 64 stays of 48 hours at hidden size 64); fresh
    allocations of that size are page-faulted in again at every step, reused ones are not. Reuse is safe: the tensors saved for backward are views of these
    buffers, and a later forward that overwrites them bumps their version counter, so autograd
    refuses a stale backward instead of computing with overwritten values. Per-stay gradients
    handed to the optimizer live here too: they stay valid until the next backward pass.
    """

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = like.new_empty(numel + numel // 4)  # headroom: Poisson batch sizes vary
            self._flat[name] = flat
        return flat[:numel].view(shape)

    def clear(self) -> None:
        self._flat.clear()

    def __deepcopy__(self, memo) -> _Workspace:
        return _Workspace()

    def __getstate__(self) -> dict:
        return {"_flat": {}}


def _taker(workspace: _Workspace | None):
    if workspace is None:
        return lambda name, shape, like: like.new_empty(shape)
    return workspace.take


class _LinearFunction(torch.autograd.Function):
    """`F.linear` whose backward can store per-stay weight and bias gradients."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, record):
        ctx.save_for_backward(inputs, weight)
        ctx.record = record
        ctx.has_bias = bias is not None
        return F.linear(inputs, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        inputs, weight = ctx.saved_tensors
        grad_in = grad_out @ weight if ctx.needs_input_grad[0] else None
        n_out, n_in = weight.shape
        if ctx.record is not None:
            batch = inputs.shape[0]
            g = grad_out.reshape(batch, -1, n_out)  # [stay, positions, out]
            a = inputs.reshape(batch, -1, n_in)
            weight_param, bias_param = ctx.record
            store_grad_sample(weight_param, torch.bmm(g.transpose(1, 2), a))
            if bias_param is not None:
                store_grad_sample(bias_param, g.sum(1))
            return grad_in, None, None, None
        g = grad_out.reshape(-1, n_out)
        grad_w = g.t() @ inputs.reshape(-1, n_in) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_in, grad_w, grad_b, None


class PerSampleLinear(nn.Linear):
    """`nn.Linear` (same parameters) that can record per-stay gradients.

    The first input dimension is the batch (one stay per row); any dimensions between the batch
    and the features (e.g. hours) are summed over in the per-stay gradients.
    """

    grad_sample_enabled: bool = False

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PerSampleLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.load_state_dict(linear.state_dict())
        return new.to(linear.weight.device, linear.weight.dtype)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (self.grad_sample_enabled and torch.is_grad_enabled()):
            return F.linear(inputs, self.weight, self.bias)
        return _LinearFunction.apply(inputs, self.weight, self.bias, (self.weight, self.bias))


class _LSTMLayerFunction(torch.autograd.Function):
    """One unidirectional LSTM layer over a time-major sequence `[T, B, I]`.

    Returns all hidden states, batch-major `[B, T, H]`, and the last cell state `[B, H]`.
    Same math as `nn.LSTM`: gates = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, split as (i, f, g, o);
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g); h_t = sigmoid(o) tanh(c_t).

    The forward loop uses only sigmoids (on CPU a sigmoid costs a fraction of a tanh):
    tanh(z) = 2 sigmoid(2z) - 1, with the factors of 2 folded into scaled copies of the
    weights (exact: powers of two) and into the stored states c2_t = 2 c_t and
    hh_t = h_t / 2. Per hour: one matrix product, one sigmoid over all four gates and six
    small elementwise kernels. The backward pass keeps delta_t, the gradient of the loss with
    respect to the gate pre-activations; it is what the per-stay gradients are made of.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, record, workspace):
        steps, batch, n_in = x.shape
        hidden = w_hh.shape[1]
        take = _taker(workspace)
        # per-row scale of the gate pre-activations: the cell gate's (i, f, g, o) is doubled
        scale = x.new_ones(4, hidden)
        scale[2] = 2.0
        scale = scale.view(-1)
        # gate sigmoids [T, B, 4H]; starts as the input projection of all hours at once
        acts = take("acts", (steps, batch, 4 * hidden), x)
        torch.addmm(
            (b_ih + b_hh) * scale,
            x.reshape(steps * batch, n_in),
            (w_ih * scale[:, None]).t(),
            out=acts.view(steps * batch, 4 * hidden),
        )
        w_rec = (w_hh * (2 * scale)[:, None]).t()  # acts on hh = h / 2
        hh = take("hh", (steps + 1, batch, hidden), x)  # h_0 / 2 .. h_T / 2
        c2 = take("c2", (steps + 1, batch, hidden), x)  # 2 c_0 .. 2 c_T
        sig_c = take("sig_c", (steps, batch, hidden), x)  # sigmoid(2 c_t) = (1 + tanh(c_t)) / 2
        if h0 is None:
            hh[0].zero_()
        else:
            torch.mul(h0, 0.5, out=hh[0])
        if c0 is None:
            c2[0].zero_()
        else:
            torch.mul(c0, 2.0, out=c2[0])
        gates = acts.unbind(0)
        i_t, f_t, g_t, o_t = (part.unbind(0) for part in acts.split(hidden, dim=2))
        h_t, c_t, s_t = hh.unbind(0), c2.unbind(0), sig_c.unbind(0)
        with _one_thread():
            for t in range(steps):
                if t > 0 or h0 is not None:
                    gates[t].addmm_(h_t[t], w_rec)
                gates[t].sigmoid_()  # g_t[t] now holds sigmoid(2 z_g) = (1 + tanh(z_g)) / 2
                # 2 c_t = f (2 c_{t-1}) + 2 i tanh(z_g) = f c2 + 4 i sig_g - 2 i
                torch.mul(f_t[t], c_t[t], out=c_t[t + 1])
                c_t[t + 1].addcmul_(i_t[t], g_t[t], value=4.0).sub_(i_t[t], alpha=2.0)
                torch.sigmoid(c_t[t + 1], out=s_t[t])
                # h_t / 2 = o tanh(c_t) / 2 = o sig_c - o / 2
                torch.mul(o_t[t], s_t[t], out=h_t[t + 1]).sub_(o_t[t], alpha=0.5)
        ctx.save_for_backward(x, w_ih, w_hh, acts, hh, c2, sig_c)
        ctx.record, ctx.workspace = record, workspace
        out = x.new_empty(batch, steps, hidden)  # batch-major, as the model reads it
        torch.mul(hh[1:].transpose(0, 1), 2.0, out=out)
        return out, c2[steps] * 0.5

    @staticmethod
    def backward(ctx, grad_out, grad_c_last):
        x, w_ih, w_hh, acts, hh, c2, sig_c = ctx.saved_tensors
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        take = _taker(ctx.workspace)
        i, f, sig_g, o = acts.split(hidden, dim=2)
        # m = d gate value / d pre-activation times what multiplies the gate value in the cell
        # (per unit d c_t; per unit d h_t for the output gate), for all hours at once:
        # sigmoid' = s (1 - s) and, for the cell gate, tanh'(z) = 1 - tanh^2 = 4 s (1 - s).
        m = torch.addcmul(acts, acts, acts, value=-1.0, out=take("m", acts.shape, acts))
        m_i, m_f, m_g, m_o = m.split(hidden, dim=2)
        scratch = take("scratch", sig_c.shape, acts)
        m_i.mul_(torch.mul(sig_g, 2.0, out=scratch).sub_(1.0))  # tanh(z_g)
        m_f.mul_(c2[:-1]).mul_(0.5)  # c_{t-1}
        m_g.mul_(i).mul_(4.0)
        m_o.mul_(torch.mul(sig_c, 2.0, out=scratch).sub_(1.0))  # tanh(c_t)
        m = m.view(steps, batch, 4, hidden)
        # d c_t per unit d h_t: o (1 - tanh(c_t)^2) = 4 o sig_c (1 - sig_c)
        dc_dh = torch.addcmul(sig_c, sig_c, sig_c, value=-1.0, out=take("dc_dh", sig_c.shape, acts))
        dc_dh.mul_(o).mul_(4.0)
        delta = take("delta", (steps, batch, 4, hidden), acts)  # d loss / d gate pre-activations
        m_ifg, m_o = m[:, :, :3].unbind(0), m[:, :, 3].unbind(0)
        d_ifg, d_o = delta[:, :, :3].unbind(0), delta[:, :, 3].unbind(0)
        delta_flat = delta.view(steps, batch, four_h).unbind(0)
        dc_dh_t, f_t, grad_out_t = dc_dh.unbind(0), f.unbind(0), grad_out.unbind(1)
        dc_carry = grad_c_last
        with _one_thread():
            for t in range(steps - 1, -1, -1):
                if t == steps - 1:
                    dh = grad_out_t[t]
                else:
                    dh = torch.addmm(grad_out_t[t], delta_flat[t + 1], w_hh)
                dc = torch.addcmul(dc_carry, dh, dc_dh_t[t])
                torch.mul(m_ifg[t], dc.unsqueeze(1), out=d_ifg[t])
                torch.mul(m_o[t], dh, out=d_o[t])
                dc_carry = dc * f_t[t]
        needs = ctx.needs_input_grad
        grad_h0 = delta_flat[0] @ w_hh if needs[1] else None
        grad_c0 = dc_carry if needs[2] else None
        delta = delta.view(steps, batch, four_h)
        grad_x = (delta.view(-1, four_h) @ w_ih).view(steps, batch, -1) if needs[0] else None
        if ctx.record is not None:
            # batch-major copies make each stay's matrices contiguous for the batched products
            n_in = x.shape[2]
            delta_b = take("delta_b", (batch, steps, four_h), acts).copy_(delta.transpose(0, 1))
            x_b = take("x_b", (batch, steps, n_in), x).copy_(x.transpose(0, 1))
            h_prev_b = take("h_prev_b", (batch, steps, hidden), x)
            torch.mul(hh[:-1].transpose(0, 1), 2.0, out=h_prev_b)
            p_ih, p_hh, p_bih, p_bhh = ctx.record
            delta_bt = delta_b.transpose(1, 2)  # [B, 4H, T]
            gs_ih = torch.bmm(delta_bt, x_b, out=take("gs_ih", (batch, four_h, n_in), x))
            gs_hh = torch.bmm(delta_bt, h_prev_b, out=take("gs_hh", (batch, four_h, hidden), x))
            store_grad_sample(p_ih, gs_ih)
            store_grad_sample(p_hh, gs_hh)
            bias = delta_b.sum(1)
            store_grad_sample(p_bih, bias)
            store_grad_sample(p_bhh, bias.clone())  # a separate tensor: Opacus flags each one
            return grad_x, grad_h0, grad_c0, None, None, None, None, None, None
        flat = delta.view(-1, four_h)
        grad_w_ih = flat.t() @ x.reshape(-1, x.shape[2]) if needs[3] else None
        grad_w_hh = flat.t() @ (hh[:-1].reshape(-1, hidden) * 2) if needs[4] else None
        grad_b = flat.sum(0) if needs[5] or needs[6] else None
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_b, None, None


class PerSampleLSTM(nn.Module):
    """Drop-in for `nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=...)`.

    Same parameters (`weight_ih_l{k}` `[4H, in]`, `weight_hh_l{k}` `[4H, H]`, `bias_ih_l{k}`,
    `bias_hh_l{k}` `[4H]`, in nn.LSTM's order), so state dicts move between the two unchanged;
    same outputs `(output [B, T, H], (h_n [L, B, H], c_n [L, B, H]))`. Dropout between layers
    is applied in training mode as in nn.LSTM (the masks come from a different random draw).
    With `grad_sample_enabled`, a backward pass stores per-stay gradients as `grad_sample`.
    Unidirectional, with biases and batched inputs only, as the mortality model uses it.
    """

    grad_sample_enabled: bool = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise ValueError("hidden_size and num_layers must be at least 1")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout = float(dropout)
        self.batch_first, self.bidirectional, self.bias, self.proj_size = True, False, True, 0
        self._workspaces = [_Workspace() for _ in range(num_layers)]
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else hidden_size
            for name, shape in (
                ("weight_ih", (4 * hidden_size, n_in)),
                ("weight_hh", (4 * hidden_size, hidden_size)),
                ("bias_ih", (4 * hidden_size,)),
                ("bias_hh", (4 * hidden_size,)),
            ):
                self.register_parameter(f"{name}_l{layer}", nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's initialization: every parameter uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM | PerSampleLSTM) -> PerSampleLSTM:
        """A PerSampleLSTM with a copy of `lstm`'s weights."""
        if not lstm.batch_first or lstm.bidirectional or not lstm.bias or lstm.proj_size:
            raise ValueError("only unidirectional batch-first nn.LSTM with biases and no projection")
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout)
        new.load_state_dict(lstm.state_dict())
        weight = lstm.get_parameter("weight_ih_l0")
        return new.to(weight.device, weight.dtype)

    def layer_parameters(self, layer: int) -> tuple[nn.Parameter, ...]:
        return tuple(getattr(self, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 3:
            raise ValueError(f"expected input [batch, time, features], got shape {tuple(x.shape)}")
        record = self.grad_sample_enabled and torch.is_grad_enabled()
        out = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                out = F.dropout(out, self.dropout, training=True)
            params = self.layer_parameters(layer)
            h0, c0 = (None, None) if hx is None else (hx[0][layer], hx[1][layer])
            out, c_last = _LSTMLayerFunction.apply(
                out.transpose(0, 1).contiguous(),  # time-major inside a layer
                h0, c0, *params,
                params if record else None,
                self._workspaces[layer] if record else None,
            )  # fmt: skip
            h_n.append(out[:, -1])
            c_n.append(c_last)
        return out, (torch.stack(h_n), torch.stack(c_n))

    def release_buffers(self) -> None:
        """Free the buffers kept between DP steps (they come back at the next recorded step)."""
        for workspace in self._workspaces:
            workspace.clear()

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first=True, dropout={self.dropout}"
        )


_PER_SAMPLE_MODULES = (PerSampleLSTM, PerSampleLinear)


def to_dp_model(model: MortalityLSTM) -> MortalityLSTM:
    """Swap `model`'s LSTM and linear layers, in place, for per-stay-gradient versions.

    Weights are copied, so the returned model (the same object) computes the same function and
    has the same state dict keys, shapes and order as before.
    """
    model.lstm = PerSampleLSTM.from_lstm(model.lstm)
    if model.attention is not None:
        model.attention = PerSampleLinear.from_linear(model.attention)
    model.head = PerSampleLinear.from_linear(model.head)
    return model


def make_dp_model(config: ModelConfig) -> MortalityLSTM:
    """A MortalityLSTM for DP training; same initial weights as `MortalityLSTM(config)` under
    the same torch seed."""
    return to_dp_model(MortalityLSTM(config))


def check_dp_model(model: nn.Module) -> None:
    """Raise unless every trainable parameter belongs to a layer that records per-stay gradients."""
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and not isinstance(module, _PER_SAMPLE_MODULES):
            raise ValueError(
                f"layer {name or type(module).__name__} ({type(module).__name__}) cannot record "
                "per-stay gradients; build the model with make_dp_model"
            )


@contextmanager
def grad_sample_recording(model: nn.Module):
    """Context manager: record per-stay gradients inside, restore the previous state after."""
    modules = [m for m in model.modules() if isinstance(m, _PER_SAMPLE_MODULES)]
    before = [m.grad_sample_enabled for m in modules]
    try:
        for m in modules:
            m.grad_sample_enabled = True
        yield model
    finally:
        for m, state in zip(modules, before, strict=True):
            m.grad_sample_enabled = state


@dataclass(frozen=True)
class PoissonSchedule:
    """Poisson sampling of `n` stays so that a batch holds `batch_size` stays on average.

    As Opacus's `DPDataLoader` derives it from a DataLoader of `ceil(n / batch_size)` batches:
    q = 1 / steps_per_epoch, and the expected batch size n * q (exact, not rounded) is the
    denominator that turns the noisy sum of clipped gradients into an unbiased mean gradient.
    """

    sample_rate: float
    steps_per_epoch: int
    expected_batch_size: float

    @classmethod
    def of(cls, n: int, batch_size: int) -> PoissonSchedule:
        if n < 1 or batch_size < 1:
            raise ValueError("need at least one stay and a batch size of at least 1")
        steps = math.ceil(n / batch_size)
        return cls(sample_rate=1.0 / steps, steps_per_epoch=steps, expected_batch_size=n / steps)

    def steps(self, epochs: int) -> int:
        """DP-SGD steps in `epochs` epochs (one round of local training)."""
        return epochs * self.steps_per_epoch


def private_step(
    model: MortalityLSTM,
    optimizer: DPOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    proximal: tuple[float, Sequence[torch.Tensor]] | None = None,
) -> float:
    """One DP-SGD step on one Poisson batch; returns the summed BCE loss over the batch.

    The loss is summed over stays, so `param.grad_sample[j]` is the gradient of stay j's own
    loss; `optimizer` (a DPOptimizer with `loss_reduction="mean"`) clips each to
    `max_grad_norm`, sums, adds N(0, (sigma C)^2) noise and divides by its
    `expected_batch_size` (not by the drawn batch size, which would leak it). An empty batch
    still takes a step on pure noise and is counted by the accountant, as the analysis of
    Poisson sampling requires. `proximal=(mu, start_weights)` adds FedProx's gradient
    mu (w - w_start) after privatization; it depends on no stay, so it costs no privacy.
    Per-stay recording must be on (`grad_sample_recording`).
    """
    optimizer.zero_grad(set_to_none=True)
    if len(x) == 0:
        for p in optimizer.params:
            p.grad_sample = p.new_zeros((0, *p.shape))
        loss_value = 0.0
    else:
        loss = F.binary_cross_entropy_with_logits(model(x), y, reduction="sum")
        loss.backward()
        loss_value = loss.item()
    if proximal is None:
        optimizer.step()
    elif optimizer.pre_step():
        mu, start = proximal
        for p, p0 in zip(optimizer.params, start, strict=True):
            p.grad.add_(p.detach() - p0, alpha=mu)
        optimizer.original_optimizer.step()
    return loss_value


def _generators(seed: int, secure_mode: bool) -> tuple[torch.Generator, torch.Generator]:
    if secure_mode:
        seeds = [secrets.randbits(63) for _ in range(2)]
    else:
        seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64) >> 1]
    return torch.Generator().manual_seed(seeds[0]), torch.Generator().manual_seed(seeds[1])


def train_epochs_dp(
    model: MortalityLSTM,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: IAccountant,
    proximal_mu: float = 0.0,
    anchor: Sequence[torch.Tensor] | None = None,
    secure_mode: bool = False,
    epoch_inputs: Callable[[int], np.ndarray] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> float:
    """Train in place with DP-SGD (Adam on privatized gradients); return the mean training loss
    of the last epoch.

    The DP counterpart of `shared.training.train_epochs`. Each epoch takes
    `ceil(len(x) / batch_size)` steps; each step draws a Poisson batch with Opacus's
    `UniformWithReplacementSampler` (every stay independently with probability
    q = 1 / steps_per_epoch, the sampler inside Opacus's `DPDataLoader`), computes exact
    per-stay gradients, and lets Opacus's `DPOptimizer` clip them to `max_grad_norm` (C), add
    Gaussian noise of standard deviation `noise_multiplier` (sigma) * C, divide by the expected
    batch size and step. `accountant` (e.g. `opacus.accountants.RDPAccountant`) is stepped with
    (sigma, q) after every step through the optimizer's step hook; keep one per hospital across
    rounds and read `accountant.get_epsilon(delta)` for the sample-level (epsilon, delta)-DP
    guarantee for this hospital's training stays (privacy unit: one ICU stay; see the module
    docstring for what is not covered).

    `model` must come from `make_dp_model` / `to_dp_model`. `proximal_mu > 0` adds FedProx's
    term (towards `anchor`, the trained parameters' weights in order, if given: Ditto's pull),
    `epoch_inputs` gives each epoch's augmented stays and `after_epoch(epoch)` is called after
    each epoch (without gradients, the optimizer's state kept), as in `train_epochs`.
    Deterministic for a given `seed` (Poisson sampling, noise and dropout masks are all drawn
    from seeded generators); that is also why Opacus's `secure_mode` is off by default: with a
    known seed the noise can be regenerated, so the guarantee then rests on the seed staying
    secret. `secure_mode=True` seeds the sampler and noise from the operating system's entropy
    (not reproducible) and uses Opacus's noise sampling that resists floating-point attacks.
    The returned loss is computed from the raw stays and is not privatized.
    """
    if len(x) == 0:
        raise ValueError("no training stays")
    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ValueError("noise_multiplier must be >= 0 and max_grad_norm > 0")
    check_dp_model(model)
    schedule = PoissonSchedule.of(len(x), batch_size)
    sample_gen, noise_gen = _generators(seed, secure_mode)
    torch.manual_seed(seed)  # dropout masks
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    params = [p for p in model.parameters() if p.requires_grad]
    start = list(anchor) if anchor is not None else [p.detach().clone() for p in params]
    proximal = (proximal_mu, start) if proximal_mu > 0 else None
    optimizer = DPOptimizer(
        torch.optim.Adam(params, lr=lr),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=schedule.expected_batch_size,
        loss_reduction="mean",
        generator=noise_gen,
        secure_mode=secure_mode,
    )
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=schedule.sample_rate))
    sampler = UniformWithReplacementSampler(
        num_samples=len(x),
        sample_rate=schedule.sample_rate,
        generator=sample_gen,
        steps=schedule.steps_per_epoch,
    )
    epoch_loss = float("nan")
    with grad_sample_recording(model):
        try:
            for epoch in range(1, epochs + 1):
                model.train()  # again each epoch: `after_epoch` may have scored the model
                if epoch_inputs is not None:
                    inputs = torch.from_numpy(epoch_inputs(epoch))
                total, seen = 0.0, 0
                for indices in sampler:
                    batch = torch.as_tensor(indices, dtype=torch.long)
                    total += private_step(model, optimizer, inputs[batch], targets[batch], proximal)
                    seen += len(batch)
                epoch_loss = total / seen if seen else float("nan")
                if after_epoch is not None:
                    with torch.no_grad():  # scoring, not training: nothing recorded for DP-SGD
                        after_epoch(epoch)
        finally:
            optimizer.zero_grad(set_to_none=True)
            for module in model.modules():
                if isinstance(module, PerSampleLSTM):
                    module.release_buffers()
    return epoch_loss
