"""gk.distributed, DistributedDataParallel and SyncBatchNorm in this process, on a gloo group
of one rank (the two-process behaviour is test_ddp.py's): the autograd hooks they stand
on, the buckets (views of the optimizer's flat gradient buffer, reverse registration
order), unused parameters, state_dict keys, convert_sync_batchnorm, and SyncBatchNorm's
formulas against batch norm."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
import gpukernels.distributed as dist
from gpukernels import nn
from gpukernels.ops.sync_batchnorm import SyncBatchNormFunction
from tests.distributed.test_ddp import free_port
from tests.helpers import assert_close

pytest.importorskip("torch.distributed")


@pytest.fixture
def group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", world_size=1, rank=0, timeout=30)
    yield
    dist.destroy_process_group()


def small_model():
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


# ----------------------------------------------------------------------------- autograd hooks


def test_post_accumulate_grad_hook_runs_once_per_backward_with_the_summed_gradient():
    w = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    ((w * 3).sum() + (w * w).sum()).backward()  # two uses: one final gradient
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], [5.0, 7.0])
    handle.remove()
    (w * 2).sum().backward()
    assert len(seen) == 1
    with pytest.raises(RuntimeError, match="non-leaf"):
        (w * 2).register_post_accumulate_grad_hook(print)


def test_queue_callback_runs_after_the_last_gradient_and_only_inside_backward():
    a = gk.tensor(np.ones(2), requires_grad=True)
    b = gk.tensor(np.ones(2), requires_grad=True)
    events = []
    a.register_post_accumulate_grad_hook(lambda t: (events.append("a"), gk.autograd.queue_callback(
        lambda: events.append(("end", b.grad is not None)))))
    b.register_post_accumulate_grad_hook(lambda t: events.append("b"))
    (a * b).sum().backward()
    assert events[-1] == ("end", True) and sorted(events[:2]) == ["a", "b"]
    with pytest.raises(RuntimeError, match="while a backward pass is running"):
        gk.autograd.queue_callback(print)


# ----------------------------------------------------------------------------- DDP


def test_ddp_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        nn.parallel.DistributedDataParallel(small_model())


def test_buckets_are_views_of_the_flat_gradient_buffer_in_reverse_order(group):
    model = small_model()
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=60 / 2**20)  # 60 bytes
    opt = gk.optim.SGD(model.parameters(), lr=0.1)
    gk.functional.cross_entropy(ddp(gk.randn(5, 4)), gk.tensor(np.array([0, 1, 2, 0, 1]))).backward()
    assert ddp.buckets[0][1] == ["2.bias", "2.weight"][:len(ddp.buckets[0][1])]  # the last layer first
    assert [n for _, names in ddp.buckets for n in names] == ["2.bias", "2.weight", "0.bias", "0.weight"]
    (flat,) = opt.flat_buffers()
    for p in model.parameters():  # autograd wrote every gradient into the optimizer's buffer
        assert np.shares_memory(p.grad.data, flat.grad)
    assert ddp.comm_stats["buckets"] == len(ddp.buckets) > 1
    assert ddp.comm_stats["bytes"] == sum(b for b, _ in ddp.buckets)


def test_without_an_optimizer_ddp_owns_the_buffer_until_one_exists(group):
    model = small_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = gk.randn(5, 4), gk.tensor(np.array([0, 1, 2, 0, 1]))
    gk.functional.cross_entropy(ddp(x), y).backward()
    before = [p.grad.numpy().copy() for p in model.parameters()]
    opt = gk.optim.SGD(model.parameters(), lr=0.1)  # adopts the gradients into its buffer
    (flat,) = opt.flat_buffers()
    for p, g in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    opt.zero_grad()
    gk.functional.cross_entropy(ddp(x), y).backward()
    for p, g in zip(model.parameters(), before):
        assert np.shares_memory(p.grad.data, flat.grad)
        assert_close(p.grad, g, atol=1e-6, rtol=1e-6, name="grad")


def test_an_unused_parameter_is_an_error_unless_asked_for(group):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.body(x)

    x, y = gk.randn(5, 4), gk.tensor(np.array([0, 1, 2, 0, 1]))
    ddp = nn.parallel.DistributedDataParallel(TwoHeads())
    with pytest.raises(RuntimeError, match=r"2 parameter\(s\) got no gradient.*unused\.(bias|weight)"):
        gk.functional.cross_entropy(ddp(x), y).backward()
    model = TwoHeads()
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = gk.optim.Adam(model.parameters())
    gk.functional.cross_entropy(ddp(x), y).backward()
    assert model.unused.weight.grad is None and model.body.weight.grad is not None  # unused on every rank
    opt.step()


def test_state_dict_through_module_has_no_prefix(group):
    model = small_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    assert list(ddp.module.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(ddp.state_dict()) == ["module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"]
    assert ddp.module is model


def test_no_sync_runs_no_collective(group, monkeypatch):
    model = small_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    calls = []
    real = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    x, y = gk.randn(5, 4), gk.tensor(np.array([0, 1, 2, 0, 1]))
    with ddp.no_sync():
        gk.functional.cross_entropy(ddp(x), y).backward()
    assert calls == []
    gk.functional.cross_entropy(ddp(x), y).backward()
    assert len(calls) == len(ddp.buckets) >= 1


# ----------------------------------------------------------------------------- SyncBatchNorm


def test_convert_sync_batchnorm_keeps_the_parameter_objects():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                          nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 4 * 4)))
    params, buffers = list(model.parameters()), list(model.buffers())
    model.eval()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[3][1], nn.SyncBatchNorm)
    assert model[1].momentum == 0.3 and not model[1].training
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert all(a is b for a, b in zip(model.buffers(), buffers))
    root = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(2))
    assert isinstance(root, nn.SyncBatchNorm)


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (3, 2, 5, 4)])
def test_sync_batch_norm_function_on_one_rank_equals_batch_norm(group, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3 + 1
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    g = rng.standard_normal(shape)
    results = []
    for sync in (True, False):
        xt = gk.tensor(x, requires_grad=True)
        wt, bt = gk.tensor(w, requires_grad=True), gk.tensor(b, requires_grad=True)
        rm, rv = gk.tensor(np.full(shape[1], 0.5)), gk.tensor(np.full(shape[1], 2.0))
        if sync:
            y = SyncBatchNormFunction.apply(xt, wt, bt, rm.data, rv.data, 0.1, 1e-5)
        else:
            y = gk.functional.batch_norm(xt, rm, rv, wt, bt, True, 0.1, 1e-5)
        y.backward(gk.tensor(g))
        results.append([y, xt.grad, wt.grad, bt.grad, rm, rv])
    for name, a, e in zip(["y", "x.grad", "weight.grad", "bias.grad", "running_mean", "running_var"], *results):
        assert_close(a, e, atol=1e-12, rtol=1e-12, name=name)


def test_sync_batchnorm_module_outside_a_group_is_batch_norm():
    x = gk.randn(4, 3, 5, 5)
    a, b = nn.SyncBatchNorm(3), nn.BatchNorm2d(3)
    assert_close(a(x), b(x), atol=0, rtol=0, name="y")
    assert_close(a.running_var, b.running_var, atol=0, rtol=0, name="running_var")


def test_collectives_on_arrays_and_tensors(group):
    a = np.arange(6.0).reshape(2, 3)
    assert dist.all_reduce(a, op="avg") is a
    np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))
    t = gk.tensor(np.ones(3, np.float32))
    dist.all_reduce(t, async_op=True).wait()
    dist.broadcast(t, src=0)
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.get_backend_name() == "gloo"
    dist.barrier()
    with pytest.raises(ValueError, match="contiguous"):
        dist.all_reduce(np.ones((3, 4))[:, ::2])
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(np.ones(2), op="mean")


def test_sync_batch_norm_function_takes_bf16_on_the_triton_backend(group):
    gk.set_backend("interpret")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32) * 2 + 0.5
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    results = []
    for sync in (True, False):
        xt = gk.tensor(x).to(dtype=gk.bfloat16).detach().requires_grad_()
        wt = gk.tensor(w, requires_grad=True)
        bt = gk.tensor(np.zeros(4, np.float32), requires_grad=True)
        rm, rv = gk.tensor(np.zeros(4, np.float32)), gk.tensor(np.ones(4, np.float32))
        if sync:
            y = SyncBatchNormFunction.apply(xt, wt, bt, rm.data, rv.data, 0.1, 1e-5)
        else:
            y = gk.functional.batch_norm(xt, rm, rv, wt, bt, True, 0.1, 1e-5)
        y.backward(gk.tensor(g).to(dtype=gk.bfloat16))
        assert y.dtype == gk.bfloat16 and xt.grad.dtype == gk.bfloat16
        results.append([y.float(), xt.grad.float(), wt.grad, bt.grad, rm, rv])
    for name, a, e in zip(["y", "x.grad", "weight.grad", "bias.grad", "running_mean", "running_var"], *results):
        assert_close(a, e, atol=3e-2, rtol=3e-2, name=name)
