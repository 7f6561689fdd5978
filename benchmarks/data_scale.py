"""How the persistent image store scales: build time, size on disk, memory per process and loader speed.

    python benchmarks/data_scale.py --images 5000 20000 100000 --ranks 1 2 --out benchmarks/results/data_scale.json

For each image count it generates that many SYNTHETIC radiographs (256 px; half 8-bit PNG, half 16-bit DICOM,
two images per patient; variations of a pool of phantoms, so generation stays cheap), builds the image store at
the training resolution with the pretraining bundles' preprocessing (``monai_cxrssl.data.build_store``), then
for each rank count starts that many processes, each reading its shard (``DistributedSampler``) for one epoch
through a ``DataLoader``, as a training run's loader would (no model), and measures:

- ``store_build_s`` and ``build_images_per_s`` (with ``build_workers`` threads), ``bytes_per_image`` on disk;
- ``rss_mb_per_rank``: the peak resident memory of each reading process (``VmHWM``), and its largest value;
- ``loader_images_per_s``: images per second read from the store by all ranks together (the page cache warm:
  the store was just written; a cold read from disk is slower and depends on the disk);
- at the smallest count, real SimCLR steps (ResNet-18, batch 32, the fast path) from the store and from today's
  in-memory cache, interleaved on one model: the data path (one batch from the loader and its two views on the
  device) and the model step, ``data_ms_per_step`` and ``model_ms_per_step`` (medians), the end-to-end pairs per
  second, and ``store_vs_memory_throughput`` with its 95 % interval (paired bootstrap over steps).

It writes the JSON (``{"machine": ..., "runs": [...]}``) and a Markdown table beside it, and prints the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import describe, write_results  # noqa: E402  (benchmarks/machine.py)


def generate(n: int, folder: Path, size: int = 256, pool: int = 32) -> list[dict]:
    """``n`` SYNTHETIC radiographs: half PNG (8 bit), half DICOM (16 bit, MONOCHROME2), two per patient."""
    from PIL import Image
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from monai_cxrssl.data import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    base = [make_phantom(size, seed=s) for s in range(pool)]
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        img = np.clip(base[i % pool] + rng.normal(0, 0.01, (size, size)), 0, 1)
        path = folder / (f"p{i // 2:06d}_{i:06d}." + ("png" if i % 2 == 0 else "dcm"))
        if i % 2 == 0:
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
        else:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.PatientID = "CR", f"p{i // 2:06d}"
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = (img * 4095).astype(np.uint16).tobytes()
            ds.save_as(path, enforce_file_format=True)
        entries.append({"image": str(path), "patient_id": f"p{i // 2:06d}"})
    return entries


def preprocessing(image_size: int):
    """The pretraining bundles' deterministic preprocessing (train.json's train#preprocessing)."""
    from monai.transforms import Compose, EnsureTyped, SelectItemsd

    from monai_cxrssl.data import LoadCXRd, ResizeCXRd

    return Compose([LoadCXRd(keys="image", apply_voi=True), ResizeCXRd(keys="image", size=image_size, mode="pad"),
                    EnsureTyped(keys="image", track_meta=False), SelectItemsd(keys=["image", "patient_id"])])


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_shard(store_dir: str, rank: int, ranks: int, batch_size: int, queue) -> None:
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from monai_cxrssl.data import CXRImageStore

    torch.set_num_threads(1)
    store = CXRImageStore(store_dir)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(store)

        def __getitem__(self, i):
            return {"image": store.image(i), "patient_id": store.items[i].get("patient_id", "")}

    sampler = DistributedSampler(Images(), num_replicas=ranks, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(Images(), batch_size=batch_size, sampler=sampler, drop_last=True)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["image"].shape[0]
    queue.put({"rank": rank, "images": n, "seconds": time.perf_counter() - t0, "rss_mb": _hwm_mb()})


def read_epoch(store_dir: Path, ranks: int, batch_size: int = 64) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_shard, args=(str(store_dir), r, ranks, batch_size, queue)) for r in range(ranks)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=3600) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    wall = max(r["seconds"] for r in results)
    return {"loader_images_per_s": sum(r["images"] for r in results) / wall,
            "rss_mb_per_rank": max(r["rss_mb"] for r in results), "per_rank": results}


def simclr_steps(entries: list[dict], store_dir: Path, image_size: int, steps: int = 12, seed: int = 0) -> dict:
    """Real SimCLR steps from the store and from today's in-memory cache, interleaved on one model: one step from
    each in turn (which goes first alternates), so that the CPU's drift falls on both alike. Per source: the median
    data path (one batch from the loader and its two views) and model step, the end-to-end pairs per second, and
    the store's end-to-end throughput relative to memory's with a 95 % interval (a paired bootstrap over steps)."""
    import torch

    from monai_cxrssl.data import CXRCacheDataset, CXRStoreDataset, ViewBatch, two_views
    from monai_cxrssl.data.loaders import ssl_dataloader
    from monai_cxrssl.engines.precision import autocast, resolve_precision, to_channels_last
    from monai_cxrssl.methods import SimCLR
    from monai_cxrssl.networks import build_backbone

    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    datasets = {"store": CXRStoreDataset(entries, preprocessing(image_size), store_dir, progress=False),
                "memory": CXRCacheDataset(entries, preprocessing(image_size), num_workers=2)}
    def batches(dataset):  # epoch after epoch
        for epoch in range(1 << 30):
            loader = ssl_dataloader(dataset, batch_size=32, seed=0)
            loader.sampler.set_epoch(epoch)
            yield from loader

    loaders = {name: batches(ds) for name, ds in datasets.items()}
    torch.manual_seed(0)
    method = SimCLR(build_backbone("resnet18", in_channels=1))
    to_channels_last(method)
    opt = torch.optim.AdamW(method.param_groups(1e-5), lr=1e-3)
    views = ViewBatch(two_views(image_size), seed=0, target_key=None)
    times = {name: {"data": [], "model": []} for name in loaders}
    for step in range(steps + 1):  # step 0 of each warms up
        for name in (list(loaders) if step % 2 == 0 else list(loaders)[::-1]):
            t0 = time.perf_counter()
            x = [v.contiguous(memory_format=torch.channels_last)
                 for v in views.make_views(next(loaders[name]), device, iteration=step + 1)]
            t1 = time.perf_counter()
            with autocast(precision, device):
                loss = method(x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            t2 = time.perf_counter()
            if step:
                times[name]["data"].append(t1 - t0)
                times[name]["model"].append(t2 - t1)
    out = {"precision": precision, "steps": steps, "batch": 32}
    total = {}
    for name, t in times.items():
        total[name] = np.add(t["data"], t["model"])
        out[name] = {"data_ms_per_step": 1000 * float(np.median(t["data"])),
                     "model_ms_per_step": 1000 * float(np.median(t["model"])),
                     "pairs_per_s": 32 * steps / float(total[name].sum())}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, steps, (2000, steps))
    boot = total["memory"][idx].sum(1) / total["store"][idx].sum(1)
    out["store_vs_memory_throughput"] = float(total["memory"].sum() / total["store"].sum())
    out["store_vs_memory_ci95"] = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", nargs="+", type=int, default=[5000, 20000, 100000])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--image-size", type=int, default=224, help="the store's (training) resolution")
    p.add_argument("--source-size", type=int, default=256)
    p.add_argument("--build-workers", type=int, default=2)
    p.add_argument("--simclr-steps", type=int, default=12,
                   help="SimCLR steps from each source at the smallest count, interleaved (0: none)")
    p.add_argument("--work-dir", default=None, help="where the images and stores go (default: a temporary folder)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_scale.json"))
    args = p.parse_args(argv)

    from monai_cxrssl.data import build_store

    machine = describe()
    print(f"CPU: {machine['cpu']}; flags: {' '.join(machine['flags'])}; {machine['cores']} cores", flush=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cxrssl-data-scale-"))
    runs = []
    started = time.time()
    try:
        for n in sorted(args.images):
            t0 = time.perf_counter()
            entries = generate(n, work / f"images_{n}", args.source_size)
            gen_s = time.perf_counter() - t0
            store = work / f"store_{n}"
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.perf_counter()
            build_store(entries, _without_select(args.image_size), store, keep_keys=["patient_id"], num_workers=args.build_workers, progress=True)
            build_s = time.perf_counter() - t0
            size = (store / "images.bin").stat().st_size
            print(f"{n} images: generated in {gen_s:.0f} s; store built in {build_s:.1f} s "
                  f"({n / build_s:.0f} images/s, {args.build_workers} threads), {size / n:.0f} bytes per image",
                  flush=True)
            for ranks in args.ranks:
                read = read_epoch(store, ranks)
                run = {"images": n, "ranks": ranks, "image_size": args.image_size, "store_build_s": round(build_s, 2),
                       "build_images_per_s": round(n / build_s, 1), "build_workers": args.build_workers,
                       "bytes_per_image": round(size / n, 1), "rss_mb_per_rank": round(read["rss_mb_per_rank"], 1),
                       "loader_images_per_s": round(read["loader_images_per_s"], 1),
                       "per_rank": read["per_rank"]}
                print(f"  {ranks} rank(s): {run['loader_images_per_s']:.0f} images/s, peak RSS per rank "
                      f"{run['rss_mb_per_rank']:.0f} MB", flush=True)
                runs.append(run)
            if n == min(args.images) and args.simclr_steps:
                steps = simclr_steps(entries, store, args.image_size, args.simclr_steps)
                print(f"  SimCLR step ({steps['precision']}): {json.dumps({k: v for k, v in steps.items() if k != 'precision'})}",
                      flush=True)
                for run in runs:
                    if run["images"] == n:
                        run["simclr"] = steps
            shutil.rmtree(work / f"images_{n}", ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    result = {"machine": machine, "command": "python benchmarks/data_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "wall_s": round(time.time() - started, 1), "runs": runs}
    write_results(result, args.out, table(result))
    return 0


def _without_select(image_size: int):
    from monai.transforms import Compose

    return Compose(preprocessing(image_size).transforms[:3])


def table(result: dict) -> str:
    m = result["machine"]
    rows = ["## Image store at scale", "", f"Machine: {m['cpu']}, {m['cores']} cores; CPU flags: {' '.join(m['flags'])}",
            "", "| images | ranks | store build s | build images/s (threads) | bytes per image | peak RSS MB per rank "
            "| loader images/s (all ranks) |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rows.append(f"| {r['images']} | {r['ranks']} | {r['store_build_s']} | {r['build_images_per_s']} "
                    f"({r['build_workers']}) | {r['bytes_per_image']:.0f} | {r['rss_mb_per_rank']:.0f} "
                    f"| {r['loader_images_per_s']:.0f} |")
    simclr = next((r["simclr"] for r in result["runs"] if "simclr" in r), None)
    if simclr:
        rows += ["", f"SimCLR step, ResNet-18, batch 32, {simclr['precision']}:", "",
                 "| data from | data path ms per step | model ms per step | end-to-end pairs/s |", "|---|---|---|---|"]
        for name in ("store", "memory"):
            s = simclr[name]
            rows.append(f"| {name} | {s['data_ms_per_step']:.0f} | {s['model_ms_per_step']:.0f} | {s['pairs_per_s']:.2f} |")
        if "store_vs_memory_throughput" in simclr:
            lo, hi = simclr["store_vs_memory_ci95"]
            rows += ["", f"{simclr['steps']} steps from each, interleaved (medians per step): the store's end-to-end "
                     f"throughput is {simclr['store_vs_memory_throughput']:.3f} x memory's (95 % interval "
                     f"{lo:.3f}-{hi:.3f}, paired bootstrap over steps)."]
    rows += ["", f"Command: `{result['command']}`; wall time {result['wall_s'] / 60:.1f} min.", ""]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
