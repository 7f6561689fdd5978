"""MoCo: momentum update by hand, the queue, shuffle-BN, exact resumption, argument errors."""

import pytest
import torch
from torch import nn

from monai.utils import set_determinism

from small_runs import assert_same_state, run_small

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.methods import MoCo
from monai_cxrssl.methods.moco import encode_shuffled, shuffle_chunks, shuffle_permutation, unshuffle
from monai_cxrssl.networks import build_backbone
from small_methods import step_values


def _moco(**kwargs):
    args = {"hidden_dim": 32, "out_dim": 16, "queue_size": 10, **kwargs}
    return MoCo(build_backbone("resnet10", widen_factor=0.25), **args)


def _views(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, size, size, generator=g) for _ in range(2)]


# --------------------------------------------------------------------------- momentum update
def test_key_encoder_follows_the_query_by_hand():
    torch.manual_seed(0)
    method = _moco(momentum=0.9).train()
    query = [method.backbone, method.head]
    keys = [method.key_backbone, method.key_head]
    for q, k in zip(query, keys):  # the key encoder starts as an exact, frozen copy
        for (name, a), b in zip(q.state_dict().items(), k.state_dict().values()):
            assert torch.equal(a, b), name
        assert not any(p.requires_grad for p in k.parameters())
    key_before = [{n: p.detach().clone() for n, p in k.named_parameters()} for k in keys]

    opt = torch.optim.SGD(method.parameters(), lr=0.5)  # all parameters: the frozen ones get no gradient
    method.before_step(1, step_values(method, 1, 10))
    out = method(_views())
    assert set(out) == {"loss", "momentum"} and out["momentum"].item() == pytest.approx(0.9)
    out["loss"].backward()
    opt.step()
    for k, before in zip(keys, key_before):  # the optimiser leaves the key encoder alone
        assert all(p.grad is None and torch.equal(p, before[n]) for n, p in k.named_parameters())
    method.after_step()

    changed = 0
    for q, k, before in zip(query, keys, key_before):
        q_params = dict(q.named_parameters())
        for name, p in k.named_parameters():
            expected = 0.9 * before[name] + 0.1 * q_params[name].detach()
            assert torch.allclose(p, expected, atol=1e-7), name
            changed += int(not torch.equal(p, before[name]))
    assert changed > 0
    # BatchNorm statistics are the key encoder's own (from its key batches), not the query's
    qbn, kbn = method.backbone.net.bn1, method.key_backbone.net.bn1
    assert not torch.equal(qbn.running_mean, kbn.running_mean)
    assert method.export_backbone() is method.backbone  # downstream starts from the query backbone


def test_momentum_schedules():
    constant = _moco(momentum=0.99)
    assert [step_values(constant, i, 10)["momentum"] for i in (1, 5, 10)] == [0.99, 0.99, 0.99]
    cosine = _moco(momentum=0.99, momentum_schedule="cosine")
    values = [step_values(cosine, i, 10)["momentum"] for i in range(1, 12)]
    assert values[0] == pytest.approx(0.99) and values[-1] == 1.0 and values == sorted(values)
    assert values[-2] > 0.9997  # the last update barely moves the key encoder


# ------------------------------------------------------------------------------------ queue
def test_forward_enqueues_the_normalised_keys_after_the_loss_in_training_only():
    torch.manual_seed(0)
    method = _moco(queue_size=7)
    v1, v2 = _views(n=4)
    method.eval()
    before = method.memory.keys.clone()
    method([v1, v2])
    assert torch.equal(method.memory.keys, before) and int(method.memory.ptr) == 0  # evaluation leaves the queue

    method.train()
    method.before_step(1, step_values(method, 1, 10))
    k, k_all = method.encode_keys(v2)  # the same permutation and chunks as the forward pass below
    assert torch.equal(k, k_all) and torch.allclose(k.norm(dim=1), torch.ones(4))
    expected_loss = method.criterion(method.head(method.backbone(v1)), k, before)
    out = method([v1, v2])
    assert torch.allclose(out["loss"], expected_loss)  # the loss saw the queue before this batch
    assert int(method.memory.ptr) == 4 and torch.allclose(method.memory.keys[:4], k)
    assert torch.equal(method.memory.keys[4:], before[4:])
    out["loss"].backward()  # the enqueue did not disturb what backward needs


# -------------------------------------------------------------------------------- shuffle-BN
def test_permutation_depends_on_seed_and_iteration_only():
    p = shuffle_permutation(16, seed=0, iteration=3)
    assert torch.equal(p, shuffle_permutation(16, seed=0, iteration=3))
    assert sorted(p.tolist()) == list(range(16))
    assert not torch.equal(p, shuffle_permutation(16, seed=0, iteration=4))
    assert not torch.equal(p, shuffle_permutation(16, seed=1, iteration=3))


def test_chunks_cover_the_permuted_global_batch_in_rank_order():
    perm = shuffle_permutation(12, 0, 1)
    chunks = [shuffle_chunks(perm, r, 2, 3) for r in range(2)]
    assert [len(c) for rank in chunks for c in rank] == [2] * 6
    assert torch.equal(torch.cat([c for rank in chunks for c in rank]), perm)


@pytest.mark.parametrize("world, splits", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1)])
def test_unshuffle_restores_the_original_order(world, splits):
    x = torch.arange(16, dtype=torch.float32).view(16, 1)
    perm = shuffle_permutation(16, 0, 7)
    shares = [encode_shuffled(lambda t: t * 10, x, perm, r, world, splits) for r in range(world)]  # "gather"
    assert torch.equal(unshuffle(torch.cat(shares), perm), x * 10)


def test_two_simulated_ranks_equal_one_rank_with_twice_the_splits():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()
    x = torch.randn(8, 4)  # the global batch: rank 0's 4 images, then rank 1's
    perm = shuffle_permutation(8, seed=0, iteration=5)
    two_ranks = unshuffle(torch.cat([encode_shuffled(encoder, x, perm, r, 2, 1) for r in range(2)]), perm)
    one_rank = unshuffle(encode_shuffled(encoder, x, perm, 0, 1, 2), perm)
    assert torch.equal(two_ranks, one_rank)
    # BatchNorm saw random halves, not the whole batch nor the halves the queries saw
    assert not torch.allclose(one_rank, encoder(x), atol=1e-4)
    halves = torch.cat([encoder(x[:4]), encoder(x[4:])])
    assert not torch.allclose(one_rank, halves, atol=1e-4)


def test_chunks_of_one_image_are_refused():
    with pytest.raises(ValueError, match="key_splits=3"):
        encode_shuffled(nn.Identity(), torch.randn(4, 2), torch.arange(4), key_splits=3)


# --------------------------------------------------------------------------------- training
def _run(out_dir, **kw):
    return run_small(lambda: _moco(queue_size=10, momentum=0.99, momentum_schedule="cosine", key_splits=2), out_dir,
                     CXRViewAugment(out_size=32, blur_prob=0.0), weight_decay=0.0, **kw)


def test_resume_continues_exactly(tmp_path):
    _, straight = _run(tmp_path / "a")
    set_determinism(seed=0)
    initial = _moco(queue_size=10).memory.keys.clone()  # the queue every run starts from
    _run(tmp_path / "b", stop_after_epoch=1)
    ckpt = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["method"] == "moco" and ckpt["iteration"] == 3
    assert int(ckpt["state_dict"]["memory.ptr"]) == 12 % 10
    assert any(k.startswith("key_backbone.") for k in ckpt["state_dict"])
    assert any(k.startswith("key_head.") for k in ckpt["state_dict"])

    trainer, resumed = _run(tmp_path / "b", resume=True)
    assert trainer.state.epoch == 3 and trainer.state.iteration == 9
    assert_same_state(straight, resumed)
    assert int(resumed.memory.ptr) == (9 * 4) % 10
    assert bool(((resumed.memory.keys - initial).abs().sum(dim=1) > 0).all())  # 36 keys overwrote all 10 rows
    assert not torch.allclose(resumed.key_head[-1].weight, resumed.head[-1].weight)  # EMA lags the query


def test_trains_under_bf16_autocast(tmp_path):
    trainer, method = _run(tmp_path, epochs=1, precision="bf16")
    assert torch.isfinite(trainer.state.output["loss"]) and method.memory.keys.dtype == torch.float32
    assert torch.allclose(method.memory.keys.norm(dim=1), torch.ones(10), atol=1e-3)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    ({"queue_size": 0}, "queue_size must be >= 1"),
    ({"momentum": 1.5}, "momentum must be in"),
    ({"momentum_schedule": "linear"}, "momentum_schedule must be one of"),
    ({"key_splits": 0}, "key_splits must be >= 1"),
    ({"temperature": 0}, "temperature"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _moco(**kwargs)


def test_wrong_number_of_views():
    with pytest.raises(ValueError, match="2 views"):
        _moco()(_views()[:1])
