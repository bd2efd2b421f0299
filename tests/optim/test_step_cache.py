"""The step caches the bucketing of each group (FusedOptimizer._bucket_entry) and looks each state
dict up once per step: every change between steps that a cache could miss must still step like
torch.optim.

Each test runs ours and torch.optim side by side in float64 on the same gradients, changes something
between steps the way training code does, and compares parameters and state after every step.
"""
from __future__ import annotations

import pytest
import torch

import agd_kernels as ak

CASES = {
    "adam": (ak.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1)),
    "sgd-momentum": (ak.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9)),
    "rmsprop": (ak.RMSprop, torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True)),
    "adagrad": (ak.Adagrad, torch.optim.Adagrad, dict(lr=1e-1)),
}
SHAPES = [(5, 3), (7,), (2, 3, 4), (1,), (11,)]


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]


class Pair:
    """Ours and torch's optimizer over identical parameter copies, stepped on identical gradients."""

    def __init__(self, name, groups=None):
        ours_cls, torch_cls, hparams = CASES[name]
        self.ours_params, self.torch_params = _params(), _params()
        self.ours = ours_cls(self._groups(self.ours_params, groups), backend="cpu", **hparams)
        self.torch = torch_cls(self._groups(self.torch_params, groups), foreach=False, **hparams)
        self.gen = torch.Generator().manual_seed(1)

    @staticmethod
    def _groups(params, groups):
        return params if groups is None else [{"params": [params[i] for i in idx]} for idx in groups]

    def step(self, skip=()):
        """One step on fresh gradients; parameters at positions in `skip` get none."""
        for i, (a, b) in enumerate(zip(self.ours_params, self.torch_params)):
            if i in skip:
                a.grad = b.grad = None
                continue
            g = torch.randn(a.shape, generator=self.gen, dtype=a.dtype)
            a.grad, b.grad = g.clone(), g.clone()
        self.ours.step()
        self.torch.step()
        self.check()

    def check(self):
        for a, b in zip(self.ours_params, self.torch_params):
            torch.testing.assert_close(a, b)
            sa, sb = self.ours.state.get(a, {}), self.torch.state.get(b, {})
            assert sorted(sa) == sorted(sb)
            for key in sa:
                torch.testing.assert_close(torch.as_tensor(sa[key]).to(sb[key].dtype), sb[key], msg=key)


@pytest.mark.parametrize("name", CASES)
def test_state_cleared_between_steps(name):
    """state.clear() keeps the container: the cached state dicts must not be reused."""
    pair = Pair(name)
    pair.step()
    pair.step()
    pair.ours.state.clear()
    pair.torch.state.clear()
    if name == "adagrad":  # torch's Adagrad creates its state in __init__ only: re-create it as torch would
        for opt, params in ((pair.ours, pair.ours_params), (pair.torch, pair.torch_params)):
            for p in params:
                opt.state[p].update(step=torch.tensor(0.0), sum=torch.zeros_like(p))
    pair.step()
    pair.step()


@pytest.mark.parametrize("name", CASES)
def test_state_tensor_replaced(name):
    """A state tensor swapped for a copy (what state offloading does) is the one updated next step."""
    pair = Pair(name)
    pair.step()
    for opt, params in ((pair.ours, pair.ours_params), (pair.torch, pair.torch_params)):
        for p in params:
            for key, value in opt.state[p].items():
                opt.state[p][key] = value.clone()
    pair.step()


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_loaded_between_steps(name):
    """load_state_dict replaces the state container: the next step uses the loaded state."""
    pair = Pair(name)
    pair.step()
    saved_ours, saved_torch = pair.ours.state_dict(), pair.torch.state_dict()
    pair.step()
    pair.step()
    pair.ours.load_state_dict(saved_ours)
    pair.torch.load_state_dict(saved_torch)
    pair.step()


@pytest.mark.parametrize("name", CASES)
def test_gradients_come_and_go(name):
    """Which parameters have gradients changes from step to step (and across two groups)."""
    pair = Pair(name, groups=[[0, 1, 2], [3, 4]])
    pair.step()
    pair.step(skip={1, 3})
    pair.step(skip={0})
    pair.step()


def test_dtype_changed_in_place_rebuckets():
    """module.to(dtype) swaps the parameter's data but keeps the object: the cached bucket must go."""
    params = _params()
    opt = ak.SGD(params, lr=0.1, backend="cpu")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    params[2].data = params[2].data.float()
    params[2].grad = torch.ones_like(params[2])
    before = params[2].detach().clone()
    opt.step()
    assert params[2].dtype == torch.float32
    torch.testing.assert_close(params[2].detach(), before - 0.1)
