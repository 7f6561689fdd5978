"""Fine-tuning and evaluation speed of the classifier bundle, plain fp32 against the fast path.

For each mode (``fp32``: fp32, NCHW; ``fast``: the bundle's defaults, ``precision auto`` and
channels_last through :class:`~monai_cxrssl.engines.FastInferer`), one fresh subprocess:

1. builds ``bundles/cxr_classifier/configs/train.json`` on the Kermany images (end-to-end
   fine-tuning, ResNet-18, ``--image-size``, ``--label-fraction`` of the training labels), decodes
   and caches the images, and runs one epoch: training images/s are timed between
   iterations after the first, and the full-epoch time on all training images is extrapolated;
2. evaluates that model on the whole Kermany test set (624 images) with ``evaluate.json``: the
   forward pass over the test set is timed apart from the report (AUC, patient-level bootstrap CI).

Run on an otherwise idle machine::

    python benchmarks/downstream_throughput.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cxr_classifier"
MODES = {"fp32": {"precision": "fp32", "channels_last": False}, "fast": {}}


def run_worker(spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="downstream_") as out:  # the run's outputs go when it is measured
        return _measure(spec, Path(out))


def _measure(spec: dict, out: Path) -> dict:
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    common = {"bundle_root": str(BUNDLE), "dataset_dir": spec["data"], "output_dir": str(out), "progress": False,
              "image_size": spec["image_size"], "mode": "finetune", "backbone": "resnet18", "epochs": 1,
              "batch_size": spec["batch_size"], "label_fraction": spec["label_fraction"], **MODES[spec["mode"]]}

    def parser_for(files):
        p = ConfigParser()
        p.read_config([str(BUNDLE / "configs" / f) for f in files])
        for k, v in common.items():
            p[k] = v
        p.get_parsed_content("initialize")
        return p

    p = parser_for(["train.json"])
    trainer = p.get_parsed_content("train#trainer")
    stamps: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
    t = time.perf_counter()
    trainer.run()
    epoch_wall_s = time.perf_counter() - t
    n_train = len(p.get_parsed_content("train#dataset"))
    batch = spec["batch_size"]
    per_iter = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    if not per_iter:
        raise SystemExit(f"only {len(stamps)} training iteration(s) to time: use more images (--data), a larger "
                         f"--label-fraction (now {spec['label_fraction']}) or a smaller --batch-size")
    train_img_s = batch / statistics.median(per_iter)
    total_train = len(p.get_parsed_content("data").train_items) / spec["label_fraction"]

    e = parser_for(["train.json", "evaluate.json"])
    t = time.perf_counter()
    n_test = len(e.get_parsed_content("validate#dataset"))
    cache_test_s = time.perf_counter() - t
    evaluator = e.get_parsed_content("validate#evaluator")
    marks: dict[str, float] = {}
    evaluator.add_event_handler(Events.STARTED, lambda _: marks.setdefault("start", time.perf_counter()))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: marks.__setitem__("last", time.perf_counter()))
    t = time.perf_counter()
    evaluator.run()
    eval_wall_s = time.perf_counter() - t
    report = json.loads((out / "eval" / "metrics.json").read_text()) if (out / "eval" / "metrics.json").is_file() else {}
    return {
        "mode": spec["mode"], "precision": trainer.inferer.resolved(trainer.state.device),
        "channels_last": trainer.inferer.channels_last, "image_size": spec["image_size"],
        "n_train_images": n_train, "train_images_per_s": train_img_s, "epoch_wall_s": epoch_wall_s,
        "full_epoch_estimate_s": total_train / train_img_s, "n_train_all": total_train,
        "n_test": n_test, "cache_test_s": cache_test_s,
        "eval_forward_s": marks["last"] - marks["start"], "eval_wall_s": eval_wall_s,
        "test_auc": report.get("auc"), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="default: $CXRSSL_SHARED_DATA/kermany_pneumonia_224")
    ap.add_argument("--modes", nargs="*", default=["fp32", "fast"], choices=sorted(MODES))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--label-fraction", type=float, default=0.05)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "downstream_throughput.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    sys.path.insert(0, str(REPO))
    from monai_cxrssl.paths import shared_data_dir

    data = args.data or str(shared_data_dir() / "kermany_pneumonia_224")
    rows = []
    for mode in args.modes:
        spec = {"data": data, "mode": mode, "image_size": args.image_size, "batch_size": args.batch_size,
                "label_fraction": args.label_fraction}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                              cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"worker failed for {mode}:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{mode}: {r}", flush=True)
    lines = ["| mode | precision, layout | fine-tune images/s | full epoch (est.) | "
             "test forward (n) | evaluation pass incl. report | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['precision']}, {'channels_last' if r['channels_last'] else 'NCHW'} | "
                     f"{r['train_images_per_s']:.1f} | {r['full_epoch_estimate_s'] / 60:.1f} min "
                     f"({r['n_train_all']:.0f} images) | {r['eval_forward_s']:.1f} s ({r['n_test']}) | "
                     f"{r['eval_wall_s']:.1f} s | {r['peak_rss_mb']:.0f} |")
    text = "\n".join(lines) + (f"\n\nImage size {args.image_size}, batch {args.batch_size}, ResNet-18 fine-tuned end "
                               f"to end on {args.label_fraction:.0%} of the training labels for the timing. "
                               f"Command: `python benchmarks/downstream_throughput.py {' '.join(sys.argv[1:])}`")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": rows}, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
