"""Constructed prediction files with known answers, for the label-efficiency study's statistics and report tests."""

from __future__ import annotations

import csv

import numpy as np

N_PATIENTS = 30


def _labels():
    """60 test images of 30 patients (2 each); labels alternate so both classes are everywhere."""
    patients = [f"p{i // 2:03d}" for i in range(2 * N_PATIENTS)]
    y = np.array([(i // 2) % 2 for i in range(2 * N_PATIENTS)], dtype=float)
    return patients, y


def _write(path, patients, y, probs, names=("opacity",)):
    """A predictions.csv as PredictionReport writes it; y/probs (N,) or (N, K); NaN targets are left blank."""
    y = np.asarray(y, dtype=float).reshape(len(patients), -1)
    probs = np.asarray(probs, dtype=float).reshape(len(patients), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id"] + [f"prob_{n}" for n in names] + [f"target_{n}" for n in names])
        for i, pid in enumerate(patients):
            w.writerow([f"/data/{pid}-{i}.png", pid] + [f"{p:.6f}" for p in probs[i]]
                       + ["" if np.isnan(t) else int(t) for t in y[i]])
    return path


def _study(tmp_path, scores_by_run, patients, y, names=("opacity",)):
    return {spec: _write(tmp_path / spec.name / "predictions.csv", patients, y, s, names)
            for spec, s in scores_by_run.items()}
