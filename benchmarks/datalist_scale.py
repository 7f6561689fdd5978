"""How the datalist tools scale to a CheXpert-sized dataset: building, checking, splitting by patient, label
fractions down to 0.1 % and the leakage report on a 224,000-entry datalist.

    python benchmarks/datalist_scale.py --entries 224000 --out benchmarks/results/datalist_scale.json

It writes a SYNTHETIC CheXpert-like table (``labels.csv``: one row per image, about 3.4 images per patient as in
CheXpert's 224,316 images of 65,240 patients, 13 findings at CheXpert-like prevalences or "No Finding") and an
empty file per image (the tools check that files exist; none decodes an image), then measures:

- each command as a user runs it, wall time including Python's start and imports (``python -m monai_cxrssl
  --help`` alone is given as ``startup_s``): ``datalist csv`` (reads the table, checks every file exists, writes
  the datalist), ``split`` (patient-level, stratified re-split), ``leakage`` (the report);
- in one process, the library calls behind them and the bundles' own: ``load_datalist``, ``check_datalist`` with
  the file check, ``patient_split``, ``leakage_report``, and ``label_fraction`` at 10 %, 1 % and 0.1 % (by
  entry, as the classifier bundle draws, and by patient), with the labels and patients each fraction holds.

It writes the JSON and a Markdown table beside it, and prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import describe, write_results  # noqa: E402  (benchmarks/machine.py)

#: CheXpert's findings (without "No Finding") and roughly their share of positive images in its training set
FINDINGS = {"Enlarged Cardiomediastinum": 0.05, "Cardiomegaly": 0.12, "Lung Opacity": 0.47, "Lung Lesion": 0.04,
            "Edema": 0.24, "Consolidation": 0.07, "Pneumonia": 0.03, "Atelectasis": 0.15, "Pneumothorax": 0.09,
            "Pleural Effusion": 0.39, "Pleural Other": 0.02, "Fracture": 0.04, "Support Devices": 0.52}
IMAGES_PER_PATIENT = 224316 / 65240
FRACTIONS = (0.1, 0.01, 0.001)


def generate(n: int, folder: Path, seed: int = 0) -> Path:
    """``folder/labels.csv`` of ``n`` SYNTHETIC rows and an empty file per image; returns the CSV's path."""
    rng = np.random.default_rng(seed)
    n_patients = max(1, round(n / IMAGES_PER_PATIENT))
    patient = np.sort(rng.integers(0, n_patients, n))
    names = list(FINDINGS)
    positive = rng.random((n, len(names))) < np.array(list(FINDINGS.values()))
    csv_path = folder / "labels.csv"
    made: set[Path] = set()
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient", "findings"])
        for i in range(n):
            rel = Path("images") / f"patient{patient[i]:06d}" / f"view{i:07d}.png"
            if rel.parent not in made:
                (folder / rel.parent).mkdir(parents=True, exist_ok=True)
                made.add(rel.parent)
            (folder / rel).touch()
            found = [names[j] for j in np.flatnonzero(positive[i])]
            writer.writerow([rel.as_posix(), f"patient{patient[i]:06d}", "|".join(found) or "No Finding"])
    return csv_path


def command(*args: str, cwd: Path) -> float:
    """Wall seconds of ``python -m monai_cxrssl ARGS`` (it must exit 0)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "monai_cxrssl", *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"python -m monai_cxrssl {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def measure(n: int, folder: Path) -> dict:
    from monai_cxrssl.data.datalist import check_datalist, load_datalist
    from monai_cxrssl.data.splits import label_fraction, leakage_report, patient_split

    t0 = time.perf_counter()
    generate(n, folder)
    print(f"{n} entries: generated in {time.perf_counter() - t0:.0f} s", flush=True)
    run = {"entries": n, "startup_s": command("--help", cwd=folder)}
    run["cmd_datalist_csv_s"] = command("datalist", "csv", "labels.csv", "--labels-col", "findings", "--patient-col",
                                        "patient", "-o", "datalist.json", cwd=folder)
    run["cmd_split_s"] = command("split", "datalist.json", "-o", "split.json", cwd=folder)
    run["cmd_leakage_s"] = command("leakage", "split.json", "--fail-on-leak", cwd=folder)

    datalist, run["load_datalist_s"] = timed(load_datalist, folder / "split.json", keys=None)
    training = datalist["training"]
    _, run["check_datalist_s"] = timed(check_datalist, training, required_keys=("image", "labels", "patient_id"),
                                       check_files=True)
    pooled = [e for k in ("training", "validation", "test") for e in datalist.get(k, [])]
    splits, run["patient_split_s"] = timed(patient_split, pooled, val_fraction=0.1, test_fraction=0.1, seed=0)
    report, run["leakage_report_s"] = timed(leakage_report, splits)
    run["patients"] = len({e["patient_id"] for e in pooled})
    run["training_entries"], run["leaking_patients"] = len(training), report["n_patients_leaking"]
    run["fractions"] = []
    for fraction in FRACTIONS:
        for unit, group_key in (("entry", None), ("patient", "patient_id")):
            drawn, seconds = timed(label_fraction, training, fraction, seed=0, stratify_key="labels",
                                   group_key=group_key)
            run["fractions"].append({"fraction": fraction, "by": unit, "seconds": seconds, "labels": len(drawn),
                                     "patients": len({e["patient_id"] for e in drawn}),
                                     "findings_covered": int((np.asarray([e["labels"] for e in drawn]) > 0)
                                                             .any(0).sum())})
    return run


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Datalist tools at scale ({m['cpu']}; flags: {' '.join(m['flags']) or 'none'}; {m['cores']} cores)",
             "", f"`{result['command']}`", "",
             "SYNTHETIC CheXpert-like table; empty image files (no image is decoded by these tools).", "",
             "| entries | patients | startup | `datalist csv` | `split` | `leakage` | load | check (files) | "
             "patient_split | leakage_report |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['entries']:,} | {r['patients']:,} | {r['startup_s']:.1f} s | {r['cmd_datalist_csv_s']:.1f} s"
                     f" | {r['cmd_split_s']:.1f} s | {r['cmd_leakage_s']:.1f} s | {r['load_datalist_s']:.2f} s | "
                     f"{r['check_datalist_s']:.2f} s | {r['patient_split_s']:.2f} s | {r['leakage_report_s']:.2f} s |")
    lines += ["", "Commands: wall time of `python -m monai_cxrssl ...` including the start (imports); the rest: the "
              "library call in one process.", "",
              "| entries | fraction | drawn by | seconds | labels | patients | findings covered |",
              "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        for f in r["fractions"]:
            lines.append(f"| {r['training_entries']:,} training | {f['fraction']:.1%} | {f['by']} | {f['seconds']:.2f} |"
                         f" {f['labels']:,} | {f['patients']:,} | {f['findings_covered']} of {len(FINDINGS)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[224000])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "datalist_scale.json"))
    parser.add_argument("--workdir", help="folder for the generated files (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    machine = describe()
    print(f"CPU: {machine['cpu']}; flags: {' '.join(machine['flags'])}; {machine['cores']} cores", flush=True)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="datalist-scale-"))
    runs = []
    try:
        for n in args.entries:
            folder = root / f"n{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            runs.append(measure(n, folder))
            print(json.dumps(runs[-1]), flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    result = {"machine": machine, "command": "python benchmarks/datalist_scale.py " +
              " ".join(sys.argv[1:] if argv is None else argv), "runs": runs}
    write_results(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
