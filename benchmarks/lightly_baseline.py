"""Reference throughput of the ``lightly`` library's SimCLR recipe on this machine.

What it measures
----------------
End-to-end SimCLR training throughput, in *pairs per second* (one pair = the two
augmented views of one image, so pairs/s = batch_size / seconds per iteration),
of lightly's plain SimCLR recipe on real Kermany chest X-ray JPEGs:

* data: ``lightly.data.LightlyDataset`` over the image folder (class subfolders of
  JPEGs, loaded as RGB by lightly's PIL loader), restricted to ``--n-images``
  files taken evenly spaced from the sorted file list (so every class keeps
  files), with ``lightly.transforms.SimCLRTransform``
  at its defaults except ``input_size`` (two views, RandomResizedCrop, flip,
  colour jitter, random grey, PIL Gaussian blur, ImageNet normalisation), fed
  through a ``torch.utils.data.DataLoader`` (shuffled, drop_last,
  ``--num-workers`` worker processes);
* model: torchvision ``resnet18(weights=None)`` with ``fc = Identity``, lightly's
  ``SimCLRProjectionHead(512, 2048, 128)`` and ``NTXentLoss(temperature=0.2)``;
  ``AdamW(lr=1e-3)``; fp32, NCHW (contiguous) tensors, no compilation;
* step: as in lightly's examples, each view goes through the model in its own
  forward pass (``z0 = model(x0); z1 = model(x1)``), then loss, backward,
  optimizer step. ``--forward concat`` instead runs one pass on ``cat([x0, x1])``
  (what monai_cxrssl's SimCLR does), for an apples-to-apples model comparison.

For every ``--sizes`` entry it runs ``--warmup`` iterations, then times ``--reps``
windows of ``--steps`` iterations each and reports the median window. It then
measures *model-only* throughput: the same model + loss + optimizer step on one
fixed in-memory batch of two views (the first batch the loader produced), with
no data loading, over the same number of windows. The ratio end-to-end /
model-only shows how much of the step the input pipeline costs on this machine
(1.0 = loading is fully hidden behind compute).

Sampling detail: the loader uses a ``RandomSampler`` whose ``num_samples`` covers
every iteration of a size (warm-up + all windows), i.e. successive fresh
permutations of the subset without replacement, equivalent to ``shuffle=True``
over several epochs but from one iterator. This keeps worker restarts and
prefetch drains at epoch boundaries (which a small subset would make
artificially frequent) out of the timing windows.

How to run
----------
lightly needs torchvision, which cannot be installed next to the project's own
torch 2.13 CPU wheel, so this script runs from its own virtual environment::

    python3 -m venv /work/venv-lightly
    /work/venv-lightly/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venv-lightly/bin/pip install lightly torch==2.14.1 torchvision==0.29.1

    # full measurement (sizes 64, 128, 224; takes a while on 2 CPU cores)
    /work/venv-lightly/bin/python benchmarks/lightly_baseline.py

    # quick smoke test
    /work/venv-lightly/bin/python benchmarks/lightly_baseline.py \\
        --sizes 64 --steps 2 --reps 1 --warmup 1 --n-images 128 \\
        --out /tmp/lightly_smoke.json

Run it on an otherwise idle machine: any other load distorts the figures.
Keep ``--warmup`` at 3 or more: the first two steps of a fresh process are
several times slower than the rest (oneDNN primitive creation, allocator and
optimizer-state set-up), so a smaller warm-up leaks them into the first window.
The data folder defaults to ``$CXRSSL_SHARED_DATA/kermany_pneumonia_224/train``
(``CXRSSL_SHARED_DATA`` defaults to ``/work/shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

import lightly
from lightly.data import LightlyDataset
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def default_data_dir() -> str:
    root = os.environ.get("CXRSSL_SHARED_DATA", "/work/shared/data")
    return os.path.join(root, "kermany_pneumonia_224", "train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Throughput of lightly's SimCLR recipe (pairs/s) on Kermany images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=default_data_dir(),
                   help="folder of class subfolders of images")
    p.add_argument("--n-images", type=int, default=640,
                   help="use N image files, evenly spaced over the sorted relative paths")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224],
                   help="SimCLRTransform input_size values to measure")
    p.add_argument("--batch-size", type=int, default=32, help="images (pairs) per iteration")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per size and mode")
    p.add_argument("--steps", type=int, default=10, help="iterations per timed window")
    p.add_argument("--reps", type=int, default=3, help="timed windows per size and mode")
    p.add_argument("--forward", choices=["separate", "concat"], default="separate",
                   help="separate: one forward per view (lightly's examples); "
                        "concat: one forward on cat([x0, x1])")
    p.add_argument("--seed", type=int, default=0, help="model init and sampling seed")
    p.add_argument("--out", default="benchmarks/results/lightly_baseline.json",
                   help="JSON results file")
    args = p.parse_args(argv)
    for name in ("n_images", "batch_size", "steps", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.num_workers < 0:
        p.error("--warmup and --num-workers must be >= 0")
    if args.n_images < args.batch_size:
        p.error("--n-images must be >= --batch-size (drop_last would leave no batch)")
    return args


def list_images(data_dir: str, n: int) -> list[str]:
    """``n`` image files under ``data_dir``, as sorted paths relative to it.

    They are spread evenly over the sorted list of all images (not its first
    ``n``), so every class subfolder keeps files in proportion: torchvision's
    ImageFolder, which LightlyDataset builds on, refuses a class with no file.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise SystemExit(f"data folder not found: {data_dir}")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if len(files) < n:
        raise SystemExit(f"only {len(files)} images under {data_dir}, --n-images {n} asked")
    return [files[(i * len(files)) // n] for i in range(n)]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_simd_flags() -> list[str]:
    """The SSE4/AVX/FMA/AMX flags /proc/cpuinfo lists (what oneDNN can use)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return sorted(f for f in line.split(":", 1)[1].split()
                                  if f.startswith(("sse4", "avx", "fma", "amx")))
    except OSError:
        pass
    return []


class SimCLRModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        backbone = torchvision.models.resnet18(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(512, 2048, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))


def make_training(seed: int):
    torch.manual_seed(seed)
    model = SimCLRModel().train()
    criterion = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, criterion, optimizer


def make_step(model, criterion, optimizer, mode: str):
    def step(x0: torch.Tensor, x1: torch.Tensor) -> float:
        if mode == "separate":
            z0 = model(x0)
            z1 = model(x1)
        else:
            z0, z1 = model(torch.cat([x0, x1])).chunk(2)
        loss = criterion(z0, z1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # forces completion; also what a training loop logs

    return step


def summarise(window_seconds: list[float], steps: int, batch_size: int) -> dict:
    per_rep = [batch_size * steps / s for s in window_seconds]
    return {
        "window_seconds": window_seconds,
        "pairs_per_s_per_rep": per_rep,
        "pairs_per_s_median": statistics.median(per_rep),
        "seconds_per_iter_median": statistics.median(window_seconds) / steps,
    }


def measure_size(size: int, filenames: list[str], args) -> dict:
    transform = SimCLRTransform(input_size=size)  # lightly defaults otherwise
    dataset = LightlyDataset(input_dir=args.data, transform=transform, filenames=filenames)
    if len(dataset) != len(filenames):
        raise SystemExit(f"LightlyDataset found {len(dataset)} of {len(filenames)} files")
    iters_needed = args.warmup + args.steps * args.reps
    generator = torch.Generator().manual_seed(args.seed)
    sampler = RandomSampler(dataset, num_samples=iters_needed * args.batch_size,
                            generator=generator)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.num_workers, drop_last=True)

    # --- end to end: loader + step -------------------------------------------------
    model, criterion, optimizer = make_training(args.seed)
    step = make_step(model, criterion, optimizer, args.forward)
    it = iter(loader)
    fixed = None
    t_first = time.perf_counter()
    for i in range(args.warmup):
        (x0, x1), _, _ = next(it)
        if fixed is None:
            fixed = (x0.clone(), x1.clone())
        step(x0, x1)
    warmup_s = time.perf_counter() - t_first
    e2e_windows, losses = [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            (x0, x1), _, _ = next(it)
            if fixed is None:
                fixed = (x0.clone(), x1.clone())
            loss = step(x0, x1)
        e2e_windows.append(time.perf_counter() - t0)
        losses.append(loss)
    del it, loader  # shut the workers down before the model-only runs
    batch_shape = list(fixed[0].shape)

    # --- model only: same step on one fixed in-memory batch ------------------------
    model, criterion, optimizer = make_training(args.seed)
    step = make_step(model, criterion, optimizer, args.forward)
    x0, x1 = fixed
    for _ in range(args.warmup):
        step(x0, x1)
    model_windows = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(x0, x1)
        model_windows.append(time.perf_counter() - t0)

    e2e = summarise(e2e_windows, args.steps, args.batch_size)
    mdl = summarise(model_windows, args.steps, args.batch_size)
    return {
        "size": size,
        "view_batch_shape": batch_shape,
        "view_dtype": str(fixed[0].dtype),
        "warmup_seconds_end_to_end": warmup_s,
        "last_loss_per_rep": losses,
        "end_to_end": e2e,
        "model_only": mdl,
        "ratio_end_to_end_over_model_only": e2e["pairs_per_s_median"] / mdl["pairs_per_s_median"],
    }


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| size | end-to-end pairs/s | model-only pairs/s | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['size']} | {r['end_to_end']['pairs_per_s_median']:.1f} "
            f"| {r['model_only']['pairs_per_s_median']:.1f} "
            f"| {r['ratio_end_to_end_over_model_only']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    filenames = list_images(args.data, args.n_images)
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightly": lightly.__version__,
        "cpu_model": cpu_model(),
        "cpu_simd_flags": cpu_simd_flags(),
        "os_cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "platform": platform.platform(),
    }
    settings = {k: v for k, v in vars(args).items()}
    settings.update({
        "model": "torchvision resnet18(weights=None), fc=Identity",
        "projection_head": "lightly SimCLRProjectionHead(512, 2048, 128)",
        "loss": "lightly NTXentLoss(temperature=0.2)",
        "optimizer": "torch.optim.AdamW(lr=1e-3)",
        "precision": "fp32",
        "memory_format": "NCHW (contiguous)",
        "transform": "lightly SimCLRTransform(input_size=size), other arguments default",
        "dataset": "lightly LightlyDataset(input_dir=data, "
                   "filenames=n evenly spaced of the sorted files)",
        "sampler": "RandomSampler(num_samples=(warmup+steps*reps)*batch_size), drop_last",
        "n_images_used": len(filenames),
        "images_per_class": {c: sum(f.split("/")[0] == c for f in filenames)
                             for c in sorted({f.split("/")[0] for f in filenames})},
    })
    print(f"lightly {env['lightly']} | torch {env['torch']} | torchvision {env['torchvision']} "
          f"| {env['cpu_model']} | torch threads {env['torch_num_threads']}", flush=True)

    results = []
    for size in args.sizes:
        r = measure_size(size, filenames, args)
        results.append(r)
        print(f"size {size}: end-to-end {r['end_to_end']['pairs_per_s_median']:.1f} pairs/s, "
              f"model-only {r['model_only']['pairs_per_s_median']:.1f} pairs/s, "
              f"ratio {r['ratio_end_to_end_over_model_only']:.2f}", flush=True)

    print()
    print(markdown_table(results))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "settings": settings, "results": results},
                              indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
