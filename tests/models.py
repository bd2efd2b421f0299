"""A tiny conv + MLP model and a deterministic training loop, shared by the optimizer contract tests.

The model has every kind of parameter the optimizers treat differently: a 4-D conv weight (9 taps), 2-D
linear weights and 1-D biases, with sizes (54, 3, 189, 7, 21, 3) that divide no block size, plus (with
edge_cases=True, as the contract tests use it) a one-element and an empty parameter. Batches
depend only on the step index, so two runs that start from equal parameters see equal data, and a
run resumed from a checkpoint sees what an uninterrupted one would.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

IN_CHANNELS, SIDE, BATCH = 2, 5, 6


class Head(nn.Module):
    """x * scale + sum(empty): a one-element parameter, and an empty one that still gets a (0-element)
    gradient, as every parameter of a real model does."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.empty = nn.Parameter(torch.zeros(0))

    def forward(self, x):
        return x * self.scale + self.empty.sum()


class ConvMLP(nn.Module):
    """Conv2d(2->3, 3x3) -> tanh -> Linear(27->7) -> tanh -> Linear(7->3), with biases, then Head
    when `edge_cases` (which leaves the other weights as they are, but changes the trajectory)."""

    def __init__(self, edge_cases: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(IN_CHANNELS, 3, 3)
        self.fc1 = nn.Linear(3 * (SIDE - 2) ** 2, 7)
        self.fc2 = nn.Linear(7, 3)
        self.head = Head() if edge_cases else nn.Identity()

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.head(self.fc2(torch.tanh(self.fc1(h))))


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0, edge_cases: bool = False) -> ConvMLP:
    """The same initial weights for every dtype: drawn in float64, then rounded once to `dtype`."""
    torch.manual_seed(seed)
    return ConvMLP(edge_cases).double().to(dtype)


def clone_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """An independent copy (optionally cast): a second run starting from identical parameters."""
    twin = copy.deepcopy(model)
    return twin if dtype is None else twin.to(dtype)


def two_groups(model: ConvMLP, second: dict | None = None, named: bool = False) -> list[dict]:
    """Param groups [conv weight + bias], [MLP weights + biases (+ head)]; `second` overrides
    hyper-parameters of the MLP group. Each group starts with a weight, so AGD's bias_mode="follow"
    accepts both."""
    def params(in_group):
        named_params = [(n, p) for n, p in model.named_parameters() if in_group(n)]
        return named_params if named else [p for _, p in named_params]
    return [{"params": params(lambda n: n.startswith("conv."))},
            {"params": params(lambda n: not n.startswith("conv.")), **(second or {})}]


def batch(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and regression targets of step `step`, drawn in float64 and rounded to `dtype`."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, IN_CHANNELS, SIDE, SIDE, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    """The mean squared error of the model on step `step`'s batch."""
    x, y = batch(step, next(model.parameters()).dtype)
    return nn.functional.mse_loss(model(x), y)


def compute_grads(model: nn.Module, step: int, scale: float = 1.0) -> torch.Tensor:
    """Sets every .grad to the gradient of step `step`'s loss (times `scale`, as a loss scaler
    would); returns the unscaled loss."""
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, step)
    (loss * scale).backward()
    return loss.detach()


def set_grads(model: nn.Module, grads: list[torch.Tensor]) -> None:
    """Sets each parameter's .grad to the given gradient rounded to the parameter's dtype."""
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.to(p.dtype)


GradSource = Callable[[int], tuple[torch.Tensor, list[torch.Tensor]]]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps, *, grads: GradSource | None = None,
          closure_every: int = 0, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> list[torch.Tensor]:
    """Runs opt over `steps` (step indices pick the batches); returns the losses.

    Gradients are the model's own, or with `grads` (k -> (loss, gradients)) given ones: the parity
    tests feed all runs the gradients of one float64 run, see tests/optim/test_torch_parity.py.
    With closure_every = c > 0, every c-th step passes a closure that sets the gradients to step()
    instead, and step() must return the closure's loss.
    """
    def fill(k):
        if grads is None:
            return compute_grads(model, k)
        loss, gs = grads(k)
        set_grads(model, gs)
        return loss

    losses = []
    for k in steps:
        if closure_every and k % closure_every == 0:
            loss = opt.step(lambda k=k: fill(k))
            assert isinstance(loss, torch.Tensor), f"step(closure) returned {loss!r}, not the closure's loss"
        else:
            loss = fill(k)
            opt.step()
        losses.append(loss)
        if scheduler is not None:
            scheduler.step()
    return losses


def snapshot(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict[str, object]:
    """Copies of every parameter and every optimizer state value, keyed 'param <name>' and
    'state <name> <key>': what a failed or skipped step must leave untouched."""
    out: dict[str, object] = {}
    for name, p in model.named_parameters():
        out[f"param {name}"] = p.detach().clone()
        for key, value in (opt.state.get(p, {}) if opt is not None else {}).items():
            is_tensor = isinstance(value, torch.Tensor)
            out[f"state {name} {key}"] = value.detach().clone() if is_tensor else copy.deepcopy(value)
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same_bits(actual: dict[str, object], expected: dict[str, object], what: str = "") -> None:
    """Bitwise equality of two snapshots (NaN payloads and signed zeros included)."""
    assert actual.keys() == expected.keys(), (
        f"{what}: entries differ: missing {sorted(expected.keys() - actual.keys())}, "
        f"extra {sorted(actual.keys() - expected.keys())}")
    for key, e in expected.items():
        a = actual[key]
        if isinstance(e, torch.Tensor):
            assert isinstance(a, torch.Tensor) and (a.dtype, a.shape, a.device) == (e.dtype, e.shape, e.device), \
                f"{what}: {key} is {a!r}, expected a {e.dtype} tensor of shape {tuple(e.shape)} on {e.device}"
            diff = (_bits(a) != _bits(e)).sum().item()
            assert diff == 0, f"{what}: {key} differs in {diff} bytes"
        else:
            assert a == e, f"{what}: {key} is {a!r}, expected {e!r}"
