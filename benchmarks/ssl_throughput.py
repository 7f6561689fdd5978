"""SSL pretraining throughput of the bundles, against what the model alone allows and the machine's peak.

For each SSL bundle (``bundles/<method>_cxr``), image size and precision mode, one fresh
subprocess builds the bundle's own ``configs/train.json`` (its data pipeline, trainer and
handlers, with command-line-style overrides) on real Kermany radiographs and measures:

(a) **end to end**: pairs/s of ``trainer.run()`` (cached images -> DataLoader -> batched views on
    the device -> method -> loss -> optimiser -> LR schedule, logging and TensorBoard handlers),
    timed between Ignite ``ITERATION_COMPLETED`` events after ``--warmup`` iterations, in
    ``--reps`` windows of ``--steps`` iterations; the median window is reported;
(b) **model only**: the same method, optimiser, precision and memory layout stepping on batches
    of views made beforehand and kept in memory (no data loading, no augmentation, no handlers).
    Its windows alternate with (a)'s in the same process (a window of each in turn), so that
    the machine's speed drifts affect both alike;
(c) **pipeline efficiency** = (a) / (b);
(d) the **modes**: ``fp32`` (fp32, NCHW: the plain baseline), ``fast`` (the bundle's defaults:
    ``precision auto``, channels_last) and ``bf16`` (bf16 autocast forced, channels_last);
(e) **peak resident memory** of the subprocess (``ru_maxrss``; it includes the image cache);
(f) **achieved GFLOP/s** of the model step (FLOPs of one forward+backward counted by
    ``torch.utils.flop_counter``) against a square-matmul peak measured in the same run.

Sweeps (``--sweep simclr:batch_size=16,32,64,128``) repeat (a)-(f) over one config value,
e.g. batch size, a MoCo queue size or a DINO crop count, at ``--sweep-size``. The table ends with
an on-paper estimate of data-parallel scaling from the measured single-process step.

Run on an otherwise idle machine (other load distorts every figure)::

    python benchmarks/ssl_throughput.py                     # all methods, 64/128/224 px
    python benchmarks/ssl_throughput.py --sizes 64 --reps 2 --steps 3 --out /tmp/quick.json

It writes JSON (``--out``) and a Markdown table (same path, ``.md``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "fast": {},  # the bundle's own defaults
    "bf16": {"precision": "bf16", "channels_last": True},
}


# --------------------------------------------------------------------------------------------- worker
def matmul_peak(dtype_name: str = "float32", n: int = 2048, reps: int = 5) -> float:
    """Median GFLOP/s of an ``n x n`` matrix multiply in ``dtype``."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def run_worker(spec: dict) -> dict:
    """Measure one configuration (runs in its own process; see the module docstring)."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from torch.utils.flop_counter import FlopCounterMode

    from monai_cxrssl.data import write_datalist
    from monai_cxrssl.data.datalist import build_datalist

    warmup, steps, reps, batch = spec["warmup"], spec["steps"], spec["reps"], spec["overrides"]["batch_size"]
    n_iter = warmup + steps * reps
    tmp = Path(tempfile.mkdtemp(prefix="ssl_throughput_"))
    # a class-balanced subset of the training images, just enough for n_iter batches
    entries = build_datalist(spec["data"])["training"]
    need = batch * n_iter
    if len(entries) < need:
        raise SystemExit(f"{spec['data']} has {len(entries)} training images; {need} are needed")
    step = len(entries) / need
    subset = [entries[int(i * step)] for i in range(need)]
    datalist = tmp / "datalist.json"
    write_datalist({"training": subset}, datalist)

    bundle = REPO / "bundles" / f"{spec['method']}_cxr"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    overrides = {"bundle_root": str(bundle), "datalist": str(datalist), "output_dir": str(tmp / "out"),
                 "epochs": 1, "progress": False, "log_every": 10**9, **spec["overrides"]}
    for k, v in overrides.items():
        parser[k] = v
    parser["train#trainer#epoch_length"] = n_iter
    parser.get_parsed_content("initialize")  # the bundle's determinism setting

    t0 = time.perf_counter()
    parser.get_parsed_content("train#dataset")
    cache_s = time.perf_counter() - t0
    trainer = parser.get_parsed_content("train#trainer")

    # model only: the trainer's own method, optimiser, precision and layout on batches of views made
    # beforehand and kept in memory (distinct batches, as in training: a method stepping on one
    # repeated batch overfits it within a few steps, which is not the workload being measured)
    from monai_cxrssl.engines.precision import autocast

    method, opt = trainer.method, trainer.optimizer
    view_sets = []
    for k, data in zip(range(steps), parser.get_parsed_content("train#dataloader")):
        views = trainer.views.make_views(data, trainer.state.device, iteration=10**6 + k)  # the run's own recipe
        if trainer.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        view_sets.append(views)
    counter = iter(range(10**9))

    def model_step():
        views = view_sets[next(counter) % len(view_sets)]
        with autocast(trainer.precision, trainer.state.device):
            loss = trainer._forward(views)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        method.after_step()

    with FlopCounterMode(display=False) as fc:
        model_step()
    flops = fc.get_total_flops()

    # (a) and (b) interleaved in one process: after the warm-up, each window of `steps` training
    # iterations is followed by a window of `steps` model-only steps, so that drifts of the machine's
    # speed (this VM's throughput wanders by 10-20% over minutes) hit both alike
    e2e, model, mark = [], [], [0.0]

    def on_iteration(engine):
        it = engine.state.iteration
        if it < warmup or (it - warmup) % steps:
            return
        if it > warmup:
            e2e.append(batch * steps / (time.perf_counter() - mark[0]))
            t = time.perf_counter()
            for _ in range(steps):
                model_step()
            model.append(batch * steps / (time.perf_counter() - t))
        else:
            for _ in range(2):  # warm the model-only path as the trainer's warm-up warmed its own
                model_step()
        mark[0] = time.perf_counter()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)
    trainer.run()
    step_s = batch / statistics.median(model)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        **{k: spec[k] for k in ("method", "size", "mode", "label")},
        "precision": trainer.precision, "channels_last": trainer.channels_last,
        "batch_size": batch, "overrides": spec["overrides"],
        "e2e_pairs_per_s": statistics.median(e2e), "e2e_reps": e2e,
        "model_pairs_per_s": statistics.median(model), "model_reps": model,
        "efficiency": statistics.median(e2e) / statistics.median(model),
        "train_flops_per_step": flops, "model_gflops_per_s": flops / step_s / 1e9,
        "n_params": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_s": cache_s, "n_images": need, "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------- driver
def measure(spec: dict, log) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec['label']}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    log(f"  {spec['label']}: e2e {result['e2e_pairs_per_s']:.1f} pairs/s, model {result['model_pairs_per_s']:.1f} "
        f"pairs/s, efficiency {result['efficiency']:.2f}, {result['model_gflops_per_s']:.0f} GFLOP/s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB ({result['wall_s']:.0f} s)")
    return result


def cpu_description() -> dict:
    import torch

    info = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name"))
        flags = next(l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags"))
        info["bf16_flags"] = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    except (OSError, StopIteration):
        pass
    from monai_cxrssl.engines.precision import resolve_precision

    info["auto_precision"] = resolve_precision("auto", "cpu")
    return info


def scaling_on_paper(rows: list[dict], world_sizes=(1, 2, 4, 8), bandwidths_gb_s=(10.0, 100.0)) -> list[dict]:
    """Data-parallel throughput from a measured single-process step, on paper.

    Per step, DDP all-reduces the gradients (ring: 2 (N-1)/N x 4 bytes x parameters over the
    link's bandwidth), with no overlap with the backward pass assumed (a pessimistic bound; DDP
    overlaps buckets in practice). The contrastive losses' all-gather of 128-d embeddings is
    kilobytes and ignored. Each process runs the measured batch.
    """
    out = []
    for r in rows:
        step_s = r["batch_size"] / r["model_pairs_per_s"]
        grad_bytes = 4 * r["n_params"]
        for bw in bandwidths_gb_s:
            for n in world_sizes:
                comm = 2 * (n - 1) / n * grad_bytes / (bw * 1e9)
                out.append({"label": r["label"], "link_gb_s": bw, "processes": n,
                            "pairs_per_s": n * r["batch_size"] / (step_s + comm),
                            "efficiency": step_s / (step_s + comm)})
    return out


def table(results: list[dict], peaks: dict) -> str:
    lines = ["| config | size | mode | precision, layout | batch | end to end pairs/s | model only pairs/s | "
             "efficiency (a/b) | model GFLOP/s | % of fp32 matmul peak | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['size']} | {r['mode']} | {r['precision']}, "
            f"{'channels_last' if r['channels_last'] else 'NCHW'} | {r['batch_size']} | {r['e2e_pairs_per_s']:.1f} | "
            f"{r['model_pairs_per_s']:.1f} | {r['efficiency']:.2f} | {r['model_gflops_per_s']:.0f} | "
            f"{100 * r['model_gflops_per_s'] / peaks['float32']:.0f}% | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="dataset folder (default: $CXRSSL_SHARED_DATA/kermany_pneumonia_224)")
    p.add_argument("--methods", nargs="*", default=None, help="SSL bundles to measure (default: every bundles/*_cxr)")
    p.add_argument("--sizes", nargs="*", type=int, default=[64, 128, 224])
    p.add_argument("--modes", nargs="*", default=["fp32", "fast"], choices=sorted(MODES))
    p.add_argument("--bf16-sizes", nargs="*", type=int, default=[64],
                   help="sizes at which the bf16 mode is also measured (slow on CPUs without native bf16)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sweep", nargs="*", default=[], help="METHOD:KEY=V1,V2,... e.g. simclr:batch_size=16,32,64,128")
    p.add_argument("--sweep-size", type=int, default=64)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ssl_throughput.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    sys.path.insert(0, str(REPO))
    from monai_cxrssl.paths import shared_data_dir

    data = args.data or str(shared_data_dir() / "kermany_pneumonia_224")
    if not Path(data).is_dir():
        raise SystemExit(f"dataset folder '{data}' does not exist; pass --data or set CXRSSL_SHARED_DATA")
    methods = args.methods or sorted(d.name[: -len("_cxr")] for d in (REPO / "bundles").glob("*_cxr")
                                     if (d / "configs" / "train.json").is_file())
    log = lambda msg: print(msg, flush=True)
    started = time.time()
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16", n=1024, reps=2)}
    log(f"matmul peak: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")

    base = {"data": data, "warmup": args.warmup, "steps": args.steps, "reps": args.reps}
    specs = []
    for m in methods:
        for size in args.sizes:
            modes = list(args.modes) + (["bf16"] if size in args.bf16_sizes and "bf16" not in args.modes else [])
            for mode in modes:
                ov = {"image_size": size, "batch_size": args.batch_size, "backbone": args.backbone, **MODES[mode]}
                specs.append({**base, "method": m, "size": size, "mode": mode, "label": f"{m} {size}px {mode}",
                              "overrides": ov})
    for sw in args.sweep:
        m, kv = sw.split(":", 1)
        key, values = kv.split("=", 1)
        for v in values.split(","):
            v = json.loads(v) if v.replace(".", "", 1).isdigit() else v
            ov = {"image_size": args.sweep_size, "batch_size": args.batch_size, "backbone": args.backbone, key: v}
            specs.append({**base, "method": m, "size": args.sweep_size, "mode": "fast",
                          "label": f"{m} {args.sweep_size}px {key}={v}", "overrides": ov, "sweep": key})
    results = []
    for spec in specs:
        r = measure(spec, log)
        r["sweep"] = spec.get("sweep")
        results.append(r)
    peaks_after = {"float32": matmul_peak("float32")}
    log(f"matmul peak after: fp32 {peaks_after['float32']:.0f} GFLOP/s")

    main_rows = [r for r in results if not r.get("sweep")]
    md = ["## SSL pretraining throughput", "",
          f"Machine: {cpu_description()}", "",
          f"fp32 matmul peak {peaks['float32']:.0f} GFLOP/s (before) / {peaks_after['float32']:.0f} (after); "
          f"bf16 {peaks['bfloat16']:.0f} GFLOP/s. Median of {args.reps} windows of {args.steps} iterations after "
          f"{args.warmup} warm-up iterations; one pair = the views of one image.", "", table(main_rows, peaks)]
    fast = {(r["method"], r["size"]): r for r in main_rows if r["mode"] == "fast"}
    speedups = [f"{m} {s}px: fast / fp32 end to end = {fast[(m, s)]['e2e_pairs_per_s'] / r['e2e_pairs_per_s']:.2f}x"
                for r in main_rows if r["mode"] == "fp32" and (m := r["method"], s := r["size"]) in fast]
    if speedups:
        md += ["", *[f"- {s}" for s in speedups]]
    sweeps = [r for r in results if r.get("sweep")]
    if sweeps:
        md += ["", "### Sweeps", "", table(sweeps, peaks)]
    paper = scaling_on_paper([r for r in main_rows if r["mode"] == "fast"])
    if paper:
        md += ["", "### Data-parallel scaling on paper (from the measured model-only step; see `scaling_on_paper`)", "",
               "| config | link GB/s | processes | pairs/s | efficiency |", "|---|---|---|---|---|"]
        md += [f"| {q['label']} | {q['link_gb_s']:.0f} | {q['processes']} | {q['pairs_per_s']:.1f} | "
               f"{q['efficiency']:.2f} |" for q in paper]
    md += ["", f"Command: `python benchmarks/ssl_throughput.py {' '.join(sys.argv[1:])}`; "
               f"wall time {(time.time() - started) / 60:.1f} min."]
    text = "\n".join(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": cpu_description(), "matmul_peak_gflops": peaks,
                               "matmul_peak_after_gflops": peaks_after, "settings": vars(args),
                               "results": results, "scaling_on_paper": paper}, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
