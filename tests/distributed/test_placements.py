"""Placements the optimizers refuse or take, on a one-rank gloo world inside the test process: the checks
run before any collective, so one rank shows them (docs/distributed.md)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

import agd_kernels as ak
from agd_kernels import distributed


@pytest.fixture
def mesh():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _param(mesh, shape, placement) -> nn.Parameter:
    torch.manual_seed(0)
    p = nn.Parameter(distribute_tensor(torch.randn(shape), mesh, [placement]))
    p.grad = distribute_tensor(torch.randn(shape), mesh, [placement])
    return p


def test_agd_refuses_a_weight_sharded_on_a_tap_dim(mesh):
    conv = _param(mesh, (3, 2, 3, 3), Shard(2))
    before = conv.to_local().clone()
    opt = ak.AGD([{"params": [conv], "param_names": ["conv.weight"]}])
    with pytest.raises(ValueError, match=r"AGD cannot take parameter 'conv.weight'.*sharded on dim 2, a kernel-tap"):
        opt.step()
    assert torch.equal(conv.to_local(), before), "a refused step must leave the parameter as it was"


@pytest.mark.parametrize("dim", [0, 1])
def test_agd_takes_weights_sharded_on_dims_0_and_1_exactly(mesh, dim):
    """Per-tap sums add up over shards of dims 0 and 1; on one rank the step equals the plain one bit for bit."""
    sharded = _param(mesh, (3, 2, 3, 3), Shard(dim))
    plain = nn.Parameter(sharded.full_tensor().clone())
    plain.grad = sharded.grad.full_tensor().clone()
    eta_sharded = ak.AGD([sharded]).step()
    eta_plain = ak.AGD([plain]).step()
    assert torch.equal(eta_sharded, eta_plain)
    assert torch.equal(sharded.full_tensor(), plain.detach())


@pytest.mark.parametrize("make", [lambda ps: ak.LAMB(ps, max_grad_norm=None), lambda ps: ak.YellowFin(ps)],
                         ids=["LAMB", "YellowFin"])
def test_partial_placements_are_refused_naming_the_parameter(mesh, make):
    p = _param(mesh, (4, 3), Replicate())
    partial = nn.Parameter(torch.distributed.tensor.DTensor.from_local(torch.randn(4, 3), mesh, [Partial()]))
    partial.grad = torch.distributed.tensor.DTensor.from_local(torch.randn(4, 3), mesh, [Partial()])
    opt = make([{"params": [p, partial], "param_names": ["w", "summed"]}])
    with pytest.raises(ValueError, match=r"parameter 'summed'.*Partial placement"):
        opt.step()


def test_nothing_sharded_means_no_collective(mesh):
    """Replicated DTensors and plain tensors hold whole tensors: no group, every rank's sums count."""
    group, keep = distributed.shard_layout([_param(mesh, (4, 3), Replicate()), torch.randn(2)], str)
    assert group is None and keep == [True, True]


def test_parameters_on_two_meshes_are_refused_naming_one(mesh):
    other = init_device_mesh("cpu", (1,), mesh_dim_names=("tp",))
    first, second = _param(mesh, (4, 3), Shard(0)), _param(other, (5, 3), Shard(0))
    opt = ak.AGD([{"params": [first, second], "param_names": ["a.weight", "b.weight"]}])
    with pytest.raises(ValueError, match=r"parameter 'b.weight'.*lives on DeviceMesh.*give each mesh its own optimizer"):
        opt.step()


@pytest.mark.parametrize("placement", [Shard(1), Partial()], ids=["Shard(1)", "Partial"])
def test_stochastic_rounding_refuses_shards_that_are_not_one_run_of_the_tensor(mesh, placement):
    """A shard along dim 1 (or a Partial) is no run of the whole tensor's element indices, which
    stochastic rounding draws its bits from: refused naming the parameter and the placement, with
    the parameter and the state as they were."""
    p = nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Replicate()]).redistribute(placements=[placement])
                     .to(torch.bfloat16)) if placement.is_shard() else nn.Parameter(
        torch.distributed.tensor.DTensor.from_local(torch.randn(4, 6).to(torch.bfloat16), mesh, [placement]))
    p.grad = torch.distributed.tensor.DTensor.from_local(torch.randn_like(p.to_local()), mesh, [placement])
    before = p.to_local().clone()
    opt = ak.AdamW([{"params": [p], "param_names": ["fc.weight"]}], stochastic_rounding=True)
    with pytest.raises(ValueError, match=r"stochastic_rounding: parameter 'fc.weight'.*placements.*"
                                         + placement.__class__.__name__ + r".*master_weights=True"):
        opt.step()
    assert torch.equal(p.to_local(), before) and not opt.state, "a refused step must change nothing"


def test_stochastic_rounding_takes_dim_0_shards_and_replicas(mesh):
    """On one rank a Shard(0) or Replicate bf16 parameter rounds as the plain tensor does, bit for bit
    (tests/distributed/test_fsdp.py checks the shards of two ranks against one process)."""
    torch.manual_seed(0)
    full, grad = torch.randn(5, 3).to(torch.bfloat16), torch.randn(5, 3).to(torch.bfloat16)
    results = []
    for placement in (None, Shard(0), Replicate()):
        p = nn.Parameter(full.clone() if placement is None else distribute_tensor(full.clone(), mesh, [placement]))
        p.grad = grad.clone() if placement is None else distribute_tensor(grad.clone(), mesh, [placement])
        opt = ak.AdamW([p], lr=1e-2, stochastic_rounding=True)
        opt.param_groups[0]["rounding_seed"] = 5
        opt.step()
        results.append(p.detach() if placement is None else p.full_tensor())
    assert not torch.equal(results[0], full)
    assert torch.equal(results[1], results[0]) and torch.equal(results[2], results[0])
