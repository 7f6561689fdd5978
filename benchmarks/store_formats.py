"""The image store against existing store formats on the same preprocessed images: zarr (one chunk per image, and
sharded) and LMDB (the library behind MONAI's ``LMDBDataset``).

    python benchmarks/store_formats.py --images 20000 --out benchmarks/results/store_formats.json

It makes ``--images`` SYNTHETIC preprocessed radiographs (1 x 224 x 224, 8 bit: variations of a pool of phantoms,
made on the fly, so that what is measured is the storage layer, not decoding) and writes them into each format,
then reads them back in a random order in a fresh process (the page cache warm: they were just written), as a
training loader asks for them. Per format: ``write_s`` (and images/s), ``bytes_per_image`` on disk, ``files``,
``read_images_per_s`` (one process, no DataLoader) and the reading process's resident memory before and after
an epoch (``rss_mb_start`` and ``rss_mb_peak``: VmHWM), since memory per process must not grow with the data.

Formats:

- ``cxrssl_store``: this project's store (``monai_cxrssl.data.build_store``: records in one file, written by 2
  threads with an ``fsync`` per 64 images and a status byte per image, so that a killed build resumes);
- ``zarr_chunk_per_image``: a zarr array (N, 1, 224, 224), one uncompressed chunk per image (one file each);
- ``zarr_sharded``: the same chunks in shards of 1,024 images (zarr 3's sharding codec: 1 file per shard);
- ``lmdb``: one key per image, raw bytes, committed every 64 images; read through its memory map.

zarr and lmdb are the ``bench`` extra (``pip install -e '.[bench]'``; the ``test`` extra holds them too).
It writes the JSON and a Markdown table beside it, and prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import importlib
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

SHAPE = (1, 224, 224)
BATCH = 64
FORMATS = ("cxrssl_store", "zarr_chunk_per_image", "zarr_sharded", "lmdb")


class Images:
    """``n`` SYNTHETIC preprocessed images, made on the fly: ``images[i]`` is ``(1, H, W)`` uint8."""

    def __init__(self, n: int, size: int = SHAPE[-1], pool: int = 32):
        from monai_cxrssl.data import make_phantom

        self.n, self.pool = n, [make_phantom(size, seed=s) for s in range(pool)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        noise = np.random.default_rng(i).normal(0, 0.01, self.pool[0].shape)
        return (np.clip(self.pool[i % len(self.pool)] + noise, 0, 1) * 255 + 0.5).astype(np.uint8)[None]


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write(fmt: str, images: Images, path: Path) -> None:
    n = len(images)
    if fmt == "cxrssl_store":
        from monai.transforms import MapTransform

        from monai_cxrssl.data import build_store

        class Made(MapTransform):  # the "decoding" of an entry: the made image, in [0, 1] as preprocessing gives it
            def __call__(self, data):
                return {**data, "image": images[int(data["image"])].astype(np.float32) / 255.0}

        build_store([{"image": str(i)} for i in range(n)], Made(keys="image"), path, keep_keys=(), num_workers=2,
                    progress=False)
    elif fmt.startswith("zarr"):
        import zarr

        shards = {"shards": (1024, *SHAPE)} if fmt == "zarr_sharded" else {}
        arr = zarr.create_array(str(path), shape=(n, *SHAPE), chunks=(1, *SHAPE), dtype="uint8", compressors=None,
                                fill_value=0, **shards)
        step = 1024 if shards else BATCH  # a shard is written whole (a partial shard would be read and rewritten)
        for start in range(0, n, step):
            arr[start:start + step] = np.stack([images[i] for i in range(start, min(n, start + step))])
    elif fmt == "lmdb":
        import lmdb

        env = lmdb.open(str(path), map_size=int(n * np.prod(SHAPE) * 1.5) + (64 << 20), subdir=True, lock=True)
        for start in range(0, n, BATCH):
            with env.begin(write=True) as txn:
                for i in range(start, min(n, start + BATCH)):
                    txn.put(f"{i:08d}".encode(), images[i].tobytes())
        env.sync()
        env.close()
    else:
        raise ValueError(fmt)


def _read_all(fmt: str, path: str, n: int, queue) -> None:
    """In a fresh process: every image once, in a random order, each as the float tensor training uses."""
    import torch

    start_mb = _vm("VmRSS")
    order = np.random.default_rng(0).permutation(n)
    if fmt == "cxrssl_store":
        from monai_cxrssl.data import CXRImageStore

        store = CXRImageStore(path)
        read = store.read
    elif fmt.startswith("zarr"):
        import zarr

        arr = zarr.open_array(path, mode="r")

        def read(i):
            return arr[int(i)]
    else:
        import lmdb

        env = lmdb.open(path, readonly=True, lock=False, readahead=False)
        txn = env.begin(buffers=True)

        def read(i):
            return np.frombuffer(txn.get(f"{int(i):08d}".encode()), dtype=np.uint8).reshape(SHAPE)
    start_mb = max(start_mb, _vm("VmRSS"))
    checksum = 0
    t0 = time.perf_counter()
    for i in order:
        image = torch.from_numpy(np.array(read(i), dtype=np.uint8, copy=True)).float().div_(255.0)
        checksum += int(image[0, 112, 112] * 255 + 0.5)
    seconds = time.perf_counter() - t0
    queue.put({"read_images_per_s": n / seconds, "rss_mb_start": start_mb, "rss_mb_peak": _vm("VmHWM"),
               "checksum": checksum})


def read_in_fresh_process(fmt: str, path: Path, n: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_all, args=(fmt, str(path), n, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def disk_usage(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_blocks * 512 for p in files), len(files)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Image store formats ({m['cpu']}; flags: {' '.join(m['flags']) or 'none'}; {m['cores']} cores)", "",
             f"`{result['command']}`", "",
             f"{result['images']:,} SYNTHETIC preprocessed images of 1 x 224 x 224, 8 bit; read in a random order by "
             "a fresh process, page cache warm; versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             "", "| format | write s (images/s) | bytes per image on disk | files | read images/s | RSS MB at start "
             "-> peak after an epoch |", "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['format']} | {r['write_s']:.1f} ({r['images'] / r['write_s']:,.0f}) | "
                     f"{r['bytes_per_image']:,.0f} | {r['files']:,} | {r['read_images_per_s']:,.0f} | "
                     f"{r['rss_mb_start']:.0f} -> {r['rss_mb_peak']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "store_formats.json"))
    parser.add_argument("--workdir", help="folder for the stores (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    machine = describe()
    print(f"CPU: {machine['cpu']}; flags: {' '.join(machine['flags'])}; {machine['cores']} cores", flush=True)
    versions = {}
    for package in ("zarr", "lmdb"):
        if any(f.startswith(package) for f in args.formats):
            versions[package] = version(package)  # missing: install the bench extra
    images = Images(args.images)
    for module in ("monai.transforms", *versions):  # every writer's imports before any write is timed
        importlib.import_module(module)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="store-formats-"))
    runs, checksums = [], set()
    try:
        for fmt in args.formats:
            path = root / fmt
            shutil.rmtree(path, ignore_errors=True)
            t0 = time.perf_counter()
            write(fmt, images, path)
            write_s = time.perf_counter() - t0
            size, files = disk_usage(path)
            run = {"format": fmt, "images": args.images, "write_s": write_s, "bytes_per_image": size / args.images,
                   "files": files, **read_in_fresh_process(fmt, path, args.images)}
            checksums.add(run.pop("checksum"))
            print(json.dumps(run), flush=True)
            runs.append(run)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    if len(checksums) != 1:
        raise SystemExit(f"the formats gave different images back (checksums {sorted(checksums)})")
    result = {"machine": machine, "versions": versions, "images": args.images,
              "command": "python benchmarks/store_formats.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "runs": runs}
    write_results(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
