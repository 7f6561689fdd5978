"""ViewBatch, the one batch preparation of every engine, and the named view recipes."""

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from monai_cxrssl.data import (RECIPES, FollowIteration, CXRViewAugment, View, ViewBatch, local_crop_size, multi_crop, normalize,
                               pair_views, single_view, two_views, view_recipe)


def _batch(n=4, size=16):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 1, size, size, generator=g), "image_pair": torch.rand(n, 1, size, size, generator=g),
            "target": torch.ones(n, 1)}


def test_evaluation_batches_are_normalised_once_and_carry_their_targets():
    b = _batch()
    x, y = ViewBatch()(b, "cpu")
    assert torch.allclose(x, (b["image"] - 0.5) / 0.25) and torch.equal(y, b["target"])
    assert ViewBatch()({"image": b["image"]}, "cpu")[1] is None
    assert ViewBatch(target_key=None)(b, "cpu")[1] is None
    feats = torch.randn(4, 8)  # precomputed features (linear probing) pass through unchanged
    assert torch.equal(ViewBatch()({"image": feats}, "cpu")[0], feats)
    assert all(torch.equal(v, feats) for v in ViewBatch(two_views(16))({"image": feats}, "cpu", iteration=1)[0])


def test_views_are_drawn_from_seed_rank_and_iteration():
    # the rule the SSL trainer has always used: parameters from one RandomState, noise from one Generator, both
    # seeded by SeedSequence([seed, rank, iteration]); every view of the iteration draws from them in order
    b = _batch()
    aug = CXRViewAugment(out_size=12)
    vb = ViewBatch([View(aug), View(aug, "image_pair")], seed=7)
    views, y = vb(b, "cpu", iteration=5)
    s = np.random.SeedSequence([7, 0, 5]).generate_state(2)
    rng, gen = np.random.RandomState(int(s[0])), torch.Generator().manual_seed(int(s[1]))
    expected = [normalize(aug(b["image"], rng, gen)), normalize(aug(b["image_pair"], rng, gen))]
    assert all(torch.equal(v, e) for v, e in zip(views, expected))
    assert not torch.allclose(views[0], vb(b, "cpu", iteration=6)[0][0])
    assert not torch.allclose(views[0], ViewBatch([View(aug), View(aug)], seed=8)(b, "cpu", iteration=5)[0][0])


def test_each_process_draws_its_own_views(monkeypatch):
    b = _batch()
    vb = ViewBatch(two_views(12), seed=0)
    rank0 = vb.make_views(b, "cpu", iteration=3)
    monkeypatch.setattr("monai_cxrssl.data.view_batch.get_rank", lambda: 1)
    rank1 = vb.make_views(b, "cpu", iteration=3)
    assert not torch.allclose(rank0[0], rank1[0])


def test_attached_it_follows_the_engine_iteration_so_a_resumed_run_sees_the_same_views():
    b = _batch()
    seen = {}

    def run(start_iteration, max_epochs, vb):
        engine = Engine(lambda e, batch: seen.setdefault((id(vb), e.state.iteration), vb(batch, "cpu")[0]))
        vb.attach(engine)
        FollowIteration(vb).attach(engine)  # (the configs' handler entry) attaching twice is harmless
        if start_iteration:
            engine.state.iteration, engine.state.epoch = start_iteration, start_iteration // 2
        engine.run([b, b], max_epochs=max_epochs)
        return vb

    straight = run(0, 3, ViewBatch(single_view(12), seed=1))
    resumed = run(2, 3, ViewBatch(single_view(12), seed=1))  # resumed after epoch 1 (2 iterations)
    for it in (3, 4, 5, 6):
        assert torch.equal(seen[(id(straight), it)], seen[(id(resumed), it)]), it
    assert resumed.state_dict() == {}
    resumed.load_state_dict({"calls": 4})  # a cxr_classifier 0.5 checkpoint's counter is accepted and unused


def test_random_views_need_an_iteration():
    with pytest.raises(RuntimeError, match="attach it to the trainer"):
        ViewBatch(single_view(12))(_batch(), "cpu")


def test_a_missing_source_key_is_named():
    with pytest.raises(KeyError, match="image_pair"):
        ViewBatch(pair_views(12))({"image": torch.rand(2, 1, 16, 16)}, "cpu", iteration=1)
    with pytest.raises(ValueError, match="'image'"):
        ViewBatch()({"image": torch.rand(2, 16, 16)}, "cpu")
    with pytest.raises(TypeError, match="View or a CXRViewAugment"):
        ViewBatch(["crop"])
    with pytest.raises(TypeError, match="takes a ViewBatch"):
        FollowIteration(two_views(12))


def test_recipes_say_what_each_method_needs():
    simclr = two_views(32, blur_prob=0.0)
    assert [v.source for v in simclr] == ["image", "image"] and simclr[0].augment.blur_prob == 0.0
    assert [v.source for v in pair_views(32)] == ["image", "image_pair"]
    dino = multi_crop(224, local_crops=6)
    assert [v.out_size for v in dino] == [224, 224] + [96] * 6
    assert [v.augment.blur_prob for v in dino[:3]] == [1.0, 0.1, 0.5]  # DINO's DataAugmentationDINO
    assert dino[0].augment.scale == (0.4, 1.0) and dino[2].augment.scale == (0.05, 0.4)
    assert [v.out_size for v in multi_crop(64, local_crops=2, local_size=16)] == [64, 64, 16, 16]
    assert len(multi_crop(64, local_crops=0)) == 2 and local_crop_size(64) == 32
    assert ViewBatch(multi_crop(64, local_crops=2)).out_sizes == {64, 32}
    assert sorted(RECIPES) == ["multi_crop", "pair_views", "single_view", "two_views"]
    assert [v.out_size for v in view_recipe("multi_crop", 64, local_crops=1)] == [64, 64, 32]
    with pytest.raises(ValueError, match="unknown view recipe"):
        view_recipe("three_views", 64)
    with pytest.raises(ValueError, match="local_crops"):
        multi_crop(64, local_crops=-1)
