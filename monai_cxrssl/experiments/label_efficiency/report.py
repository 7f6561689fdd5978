"""The study's report: the Markdown tables and the AUC-vs-label-fraction plot."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from monai_cxrssl.utils import atomic_write

from .contract import RANDOM
from .statistics import WORSE, _fmt, transfer_verdict


def format_per_finding(stats: Mapping) -> str:
    """Markdown: per finding, mode and fraction, each init's AUC [CI] and its difference from the reference."""
    rows = stats.get("per_finding") or []
    if not rows:
        return ""
    ref = stats.get("reference", RANDOM)
    pct = round(100 * stats["bootstrap"]["confidence"])
    inits = list(dict.fromkeys(r["init"] for r in rows))
    lines = [f"| finding | test pos / neg | mode | fraction | " + " | ".join(
        f"{i} AUC [{pct}% CI]" + ("" if i == ref else f" (Δ vs {ref} [{pct}% CI])") for i in inits) + " |",
        "|---|---|---|---|" + "---|" * len(inits)]
    keys = list(dict.fromkeys((r["finding"], r["mode"], r["fraction"]) for r in rows))
    by = {(r["finding"], r["mode"], r["fraction"], r["init"]): r for r in rows}
    for finding, mode, fraction in keys:
        cells = []
        for i in inits:
            r = by.get((finding, mode, fraction, i))
            if r is None:
                cells.append("—")
                continue
            cell = f"{_fmt(r['auc_mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            v = r["vs_reference"]
            if v is not None:
                cell += f" ({v['diff']:+.3f} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}])"
            cells.append(cell)
        any_row = next(r for r in rows if r["finding"] == finding)
        lines.append(f"| {finding} | {any_row['n_test_positive']} / {any_row['n_test_negative']} | {mode} | "
                     f"{fraction:g} | " + " | ".join(cells) + " |")
    excluded = stats["test_set"].get("excluded") or {}
    legend = ["", f"Per finding: seed-mean test AUC, {pct}% percentile bootstrap CI on the resamples shared with "
                  "the macro table; Δ: paired difference from the same mode, fraction and seeds of the "
                  f"{ref} init (not corrected for multiple comparisons)."]
    legend += [f"Left out: {name}: {why}." for name, why in excluded.items()]
    return "\n".join(lines + legend) + "\n"


def _span(values) -> str:
    values = [v for v in (values or []) if v is not None]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "1" if p >= 1.0 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def format_table(stats: Mapping) -> str:
    """The Markdown table of :func:`study_statistics`'s rows, with a legend."""
    ref = stats.get("reference", RANDOM)
    boot = stats["bootstrap"]
    pct = round(100 * boot["confidence"])
    counts = any(r.get("n_labels") for r in stats["rows"])
    lines = [f"| init | mode | fraction |{' labels (patients) |' if counts else ''} n seeds | AUC mean ± SD | {pct}% CI "
             f"| Δ vs {ref} [{pct}% CI] | p | verdict |",
             "|---|---|---|" + ("---|" if counts else "") + "---|---|---|---|---|---|"]
    for r in stats["rows"]:
        sd = "" if r["auc_sd"] is None else f" ± {_fmt(r['auc_sd'])}"
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        v = r["vs_reference"]
        if v is None:
            delta, p = "—", "—"
        else:
            delta = f"{v['diff']:+.3f} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]"
            p = _fmt_p(v["p_value"])
        verdict = r.get("verdict", transfer_verdict(v)) or "—"
        used = f" {_span(r.get('n_labels'))} ({_span(r.get('n_patients'))}) |" if counts else ""
        lines.append(f"| {r['init']} | {r['mode']} | {r['fraction']:g} |{used} {r['n_seeds']} | {_fmt(r['auc_mean'])}{sd} "
                     f"| {ci} | {delta} | {p} | {'**' + verdict + '**' if verdict == WORSE else verdict} |")
    ts = stats["test_set"]
    unit = (f"{ts['n_patients']} patients" if boot["resampling"] == "patient" else f"{ts['n_images']} images")
    legend = [
        "",
        f"Test set: {ts['n_images']} images"
        + (f", {ts['n_patients']} patients" if ts.get("n_patients") else "") + f"; AUC = {ts['auc']}.",
        *(["Labels: every label a run used, training and validation (model selection) together, over the seeds' "
           "draws; patients: those they come from."] if counts else []),
        f"AUC mean ± SD over seeds (label-fraction draws). {pct}% CI: percentile bootstrap of the seed-mean AUC, "
        f"{boot['n_resamples']} {boot['resampling']}-level resamples of the test set ({unit}), shared by all runs.",
        f"Δ: seed-averaged paired AUC difference vs the {ref} init (same mode, fraction and seed, hence the same "
        "labelled images), percentile CI and two-sided bootstrap p-value on the same resamples (not corrected for "
        "multiple comparisons). Verdict: better / WORSE (negative transfer) when that interval lies entirely above / "
        "below 0, else no clear difference.",
    ]
    legend += [f"Note: {n}" for n in stats.get("notes", [])]
    return "\n".join(lines + legend) + "\n"


def plot_auc_vs_fraction(stats: Mapping, path: str | os.PathLike, title: str | None = None) -> Path:
    """AUC vs label fraction (log axis), one line per init x mode with CI error bars; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = stats["rows"]
    inits = list(dict.fromkeys(r["init"] for r in rows))
    colors = {init: f"C{i % 10}" for i, init in enumerate(inits)}
    styles = {"linear": ("--", "s"), "finetune": ("-", "o")}
    fractions = sorted({r["fraction"] for r in rows})
    lines = [(init, mode) for init in inits for mode in dict.fromkeys(r["mode"] for r in rows)
             if any(r["init"] == init and r["mode"] == mode for r in rows)]
    for k, (init, mode) in enumerate(lines):
        sel = sorted((r for r in rows if r["init"] == init and r["mode"] == mode), key=lambda r: r["fraction"])
        dodge = 10 ** (0.015 * (k - (len(lines) - 1) / 2))  # side by side, so that the error bars stay apart
        x = np.array([r["fraction"] for r in sel]) * dodge
        m = np.array([r["auc_mean"] for r in sel], dtype=float)
        lo = np.array([r["ci_low"] if r["ci_low"] is not None else r["auc_mean"] for r in sel], dtype=float)
        hi = np.array([r["ci_high"] if r["ci_high"] is not None else r["auc_mean"] for r in sel], dtype=float)
        ls, marker = styles.get(mode, (":", "^"))
        ax.errorbar(x, m, yerr=np.vstack([m - lo, hi - m]).clip(min=0), color=colors[init], linestyle=ls,
                    marker=marker, capsize=3, label=f"{init} ({mode})")
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    used = {f: _span([n for r in rows if r["fraction"] == f for n in (r.get("n_labels") or [])]) for f in fractions}
    ax.set_xticklabels([f"{100 * f:g}%" + (f"\n{used[f]} labels" if used[f] != "n/a" else "") for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("label fraction (log scale), and the labels a run used (training + validation)")
    pct = round(100 * stats["bootstrap"]["confidence"])
    ax.set_ylabel(f"test AUC (mean over seeds, {pct}% CI)")
    ax.set_title(title or "Label efficiency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path
