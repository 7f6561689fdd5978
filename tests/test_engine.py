"""The SSL trainer: exact resumption, atomic checkpoints, backbone export, error cases."""

from pathlib import Path

import pytest
import torch

from ignite.engine import Events
from monai.data import Dataset
from monai.utils import set_determinism

from monai_cxrssl.checkpoints import load_backbone_weights, read_checkpoint
from monai_cxrssl.data.loaders import ssl_dataloader
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.engines import SSLCheckpoint, SSLTrainer, warmup_cosine
from monai_cxrssl.exceptions import CheckpointError, NonFiniteLossError
from monai_cxrssl.methods import SimCLR
from monai_cxrssl.networks import build_backbone


def _items(n=12, size=32, nan_at=None):
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(1, size, size, generator=g)} for _ in range(n)]
    if nan_at is not None:
        items[nan_at]["image"][:] = float("nan")
    return items


def _run(out_dir, epochs, resume=False, items=None, backbone="resnet10", seed=0, metadata=None, groups=True):
    set_determinism(seed=seed)
    method = SimCLR(build_backbone(backbone, widen_factor=0.25), hidden_dim=32, out_dim=16, temperature=0.2)
    opt = torch.optim.AdamW(method.param_groups(1e-4) if groups else method.parameters(), lr=1e-3)
    loader = ssl_dataloader(Dataset(items if items is not None else _items()), batch_size=4, seed=seed)
    sched = warmup_cosine(opt, total_steps=4 * len(loader), warmup_steps=1)
    from monai.handlers import LrScheduleHandler

    handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False),
                SSLCheckpoint(out_dir, method, opt, sched, resume=resume, metadata=metadata)]
    trainer = SSLTrainer("cpu", epochs, loader, method, opt, CXRViewAugment(out_size=32), seed=seed,
                         precision="auto", handlers=handlers)
    trainer.run()
    return trainer, method


def test_resume_continues_exactly(tmp_path):
    _, straight = _run(tmp_path / "a", epochs=3)
    _run(tmp_path / "b", epochs=1)
    ckpt = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 3 and ckpt["optimizer"]["state"]
    trainer, resumed = _run(tmp_path / "b", epochs=3, resume=True)
    assert trainer.state.epoch == 3 and trainer.state.iteration == 9
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    # and a fresh run of only the last two epochs (no resume) would differ
    _, fresh = _run(tmp_path / "c", epochs=2)
    assert not torch.allclose(fresh.head[0].weight, straight.head[0].weight)


def test_checkpoint_files_and_backbone_export(tmp_path):
    _, method = _run(tmp_path, epochs=1)
    files = sorted(p.name for p in Path(tmp_path).rglob("*") if p.is_file())
    assert files == ["backbone.pt", "checkpoint.pt", "model.pt"]  # no temporary files left behind
    other = build_backbone("resnet10", widen_factor=0.25)
    meta = load_backbone_weights(other, tmp_path / "models" / "backbone.pt")
    assert meta["method"] == "simclr" and meta["epoch"] == 1
    for a, b in zip(other.state_dict().values(), method.backbone.state_dict().values()):
        assert torch.equal(a, b)
    # models/model.pt: the backbone's plain state dict, loadable (strictly) into inference.json's network_def,
    # as the model zoo's ckpt_export loads it
    plain = build_backbone("resnet10", widen_factor=0.25)
    plain.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True), strict=True)
    for a, b in zip(plain.state_dict().values(), method.backbone.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="resnet18"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "models" / "backbone.pt")


def test_resume_with_another_backbone_fails_before_training(tmp_path):
    _run(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="backbone"):
        _run(tmp_path, epochs=2, resume=True, backbone="resnet18")


def test_a_checkpoint_with_other_optimiser_groups_is_refused_naming_it(tmp_path):
    _run(tmp_path, epochs=1, groups=False)  # one group, as the SimCLR bundle's 0.5.0 optimiser had
    with pytest.raises(CheckpointError, match=r"checkpoint.pt' has an optimiser state that does not fit"):
        _run(tmp_path, epochs=2, resume=True)


def test_resume_with_other_data_or_settings_fails_before_training_naming_them(tmp_path):
    _run(tmp_path, epochs=1, metadata={"image_size": 32, "datalist": "a.json"})
    saved = read_checkpoint(tmp_path / "checkpoint.pt")["fingerprint"]
    assert saved["n_items"] == 12 and saved["batch_size"] == 4 and saved["iterations_per_epoch"] == 3
    with pytest.raises(CheckpointError, match=r"image_size: 32 in the checkpoint, 64 now"):
        _run(tmp_path, epochs=2, resume=True, metadata={"image_size": 64, "datalist": "a.json"})
    with pytest.raises(CheckpointError, match=r"n_items: 12 in the checkpoint, 16 now.*training images differ"):
        _run(tmp_path, epochs=2, resume=True, items=_items(16), metadata={"image_size": 32, "datalist": "a.json"})
    trainer, _ = _run(tmp_path, epochs=2, resume=True, metadata={"image_size": 32, "datalist": "a.json"})
    assert trainer.state.epoch == 2  # the same data and settings resume


def test_resume_from_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _run(tmp_path, epochs=1, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        _run(tmp_path, epochs=1, resume=True)


def test_nan_loss_is_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="epoch 1, iteration"):
        _run(tmp_path, epochs=1, items=_items(nan_at=0) * 1)


def test_empty_or_too_small_dataset():
    from monai_cxrssl.exceptions import DatalistError

    with pytest.raises(DatalistError, match="empty"):
        ssl_dataloader(Dataset([]), batch_size=4)
    with pytest.raises(DatalistError, match="fewer than one batch"):
        ssl_dataloader(Dataset(_items(3)), batch_size=4)


def test_bf16_and_channels_last_path_trains(tmp_path):
    set_determinism(seed=0)
    method = SimCLR(build_backbone("resnet10", widen_factor=0.25), hidden_dim=32, out_dim=16)
    before = [p.detach().clone() for p in method.parameters()]
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    loader = ssl_dataloader(Dataset(_items(8, size=32)), batch_size=4, seed=0)
    trainer = SSLTrainer("cpu", 1, loader, method, opt, CXRViewAugment(out_size=32), precision="bf16",
                         channels_last="true", epoch_length=1)
    trainer.run()
    assert trainer.precision == "bf16" and trainer.channels_last is True
    assert torch.isfinite(trainer.state.output["loss"]) and trainer.state.output["loss"].dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters()))


def test_compiled_method_trains_like_the_eager_one():
    # torch.compile is an option of the fast path (off by default): same losses, same weights. The backend is
    # aot_eager (dynamo's capture of the method and AOT autograd, where this package's code matters), not the
    # default inductor, whose C++ kernel builds cost over a minute of CI time here
    results = []
    for compile in (False, "aot_eager"):
        set_determinism(seed=0)
        method = SimCLR(build_backbone("resnet10", widen_factor=0.25), hidden_dim=32, out_dim=16)
        opt = torch.optim.SGD(method.parameters(), lr=0.05)
        loader = ssl_dataloader(Dataset(_items(8, size=32)), batch_size=4, seed=0)
        losses = []
        trainer = SSLTrainer("cpu", 1, loader, method, opt, CXRViewAugment(out_size=32), compile=compile)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
        trainer.run()
        results.append((losses, torch.cat([p.detach().flatten() for p in method.parameters()])))
    (eager_losses, eager_w), (compiled_losses, compiled_w) = results
    assert len(eager_losses) == 2 and eager_losses == pytest.approx(compiled_losses, rel=1e-4, abs=1e-4)
    assert torch.allclose(eager_w, compiled_w, atol=1e-4)


def test_compile_settings_resolve_to_a_backend_and_a_misspelt_one_is_refused():
    from monai_cxrssl.engines.precision import resolve_compile

    assert resolve_compile(False) is None and resolve_compile("false") is None
    assert resolve_compile(True) == resolve_compile("true") == "inductor"
    assert resolve_compile("aot_eager") == "aot_eager"
    with pytest.raises(ValueError, match=r"compile must be true, false or a torch.compile backend .*'aot_eagr'"):
        resolve_compile("aot_eagr")


def test_a_training_checkpoint_gives_the_exported_backbone(tmp_path):
    # for DINO the exported network is the teacher's backbone, not the module named "backbone"
    from monai_cxrssl.methods import DINO

    set_determinism(seed=0)
    method = DINO(build_backbone("resnet10", widen_factor=0.25), n_local_crops=0, out_dim=16, hidden_dim=16,
                  bottleneck_dim=8)
    with torch.no_grad():
        for p in method.export_backbone().parameters():
            p.add_(1.0)  # teacher != student
    opt = torch.optim.SGD(method.parameters(), lr=0.0)
    ckpt = SSLCheckpoint(tmp_path, method, opt)
    trainer = SSLTrainer("cpu", 1, ssl_dataloader(Dataset(_items(4)), batch_size=4), method, opt,
                         CXRViewAugment(out_size=32), epoch_length=1, handlers=[ckpt])
    trainer.run()
    backbone = build_backbone("resnet10", widen_factor=0.25)
    load_backbone_weights(backbone, tmp_path / "checkpoint.pt")
    teacher = method.export_backbone().state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in backbone.state_dict().items())


def test_leftover_temporaries_are_removed_at_the_next_start(tmp_path):
    # a kill -9 inside a checkpoint write leaves atomic_write's temporary file behind
    (tmp_path / "models").mkdir(parents=True)
    stale = [tmp_path / ".checkpoint.pt.k3j_9x0a.tmp", tmp_path / "models" / ".backbone.pt.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = tmp_path / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    _run(tmp_path, epochs=1)
    assert not any(p.exists() for p in stale) and keep.exists()
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == ["notes.tmp"]


def test_a_full_disk_is_named_before_training_and_at_a_failed_write(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    import monai_cxrssl.utils as utils
    from monai_cxrssl.checkpoints import atomic_save

    usage = namedtuple("usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 4096, 4096))
    with pytest.raises(OSError, match=r"not enough disk space for this run's checkpoint .* needs about .* 4.0 KB free"):
        _run(tmp_path / "run", epochs=1, items=_items(8))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # a single file that does not fit: refused before writing, naming the file; the old file stays
    (tmp_path / "old.pt").write_bytes(b"old")
    with pytest.raises(OSError, match=r"'old.pt' in .* needs about 4\d\.\d KB, and the disk holding it has 4.0 KB free"):
        atomic_save({"w": torch.zeros(10_000)}, tmp_path / "old.pt")
    assert (tmp_path / "old.pt").read_bytes() == b"old"
    monkeypatch.setattr(utils.shutil, "disk_usage", real_usage)
    # the disk fills up during the write (another process): ENOSPC names the file, no temporary is left
    real_fdopen = utils.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            self.f.write(bytes(b)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError, match=r"could not write '.*old.pt': no space left .*100 B written before the failure"):
        atomic_save({"w": torch.zeros(10_000)}, tmp_path / "old.pt")
    assert (tmp_path / "old.pt").read_bytes() == b"old" and not list(tmp_path.glob(".old.pt.*"))


def test_a_resumed_run_shows_each_tensorboard_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from monai_cxrssl.checkpoints import atomic_save
    from monai_cxrssl.engines import tensorboard_writer

    log = tmp_path / "tensorboard"
    first = tensorboard_writer(log, resume=False)
    for step in range(1, 6):  # logged up to iteration 5, then killed; its last checkpoint is at iteration 3
        first.add_scalar("loss", 1.0, step)
    first.close()
    atomic_save({"iteration": 3}, tmp_path / "checkpoint.pt")
    resumed = tensorboard_writer(log, resume="true", checkpoint=tmp_path / "checkpoint.pt")
    for step in range(4, 7):
        resumed.add_scalar("loss", 2.0, step)
    resumed.close()
    events = EventAccumulator(str(log))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0),
                                                                  (6, 2.0)]


def test_the_run_schedule_is_the_methods_and_covers_the_run():
    from monai_cxrssl.engines import RunSchedule
    from small_methods import small

    loader = ssl_dataloader(Dataset(_items(n=12)), batch_size=4, seed=0)  # 3 iterations an epoch
    byol = small("byol", build_backbone("resnet10", widen_factor=0.25))
    opt = torch.optim.AdamW(byol.param_groups(1e-4), lr=1e-3)
    with pytest.raises(ValueError, match=r"holds the quantities \[\], method 'byol' schedules \['momentum'\]"):
        SSLTrainer("cpu", 1, loader, byol, opt, CXRViewAugment(out_size=32), schedule=RunSchedule(opt, 3))
    trainer = SSLTrainer("cpu", 2, loader, byol, opt, CXRViewAugment(out_size=32),
                         schedule=RunSchedule(opt, 3, method=byol))
    with pytest.raises(ValueError, match=r"covers 3 iterations, the trainer runs 6 \(2 epochs of 3\)"):
        trainer.run()
