"""ROC AUC with confidence intervals and paired model comparisons, for the downstream evaluation.

Every function takes numpy arrays (or anything ``numpy.asarray`` accepts) and returns plain Python
floats, ints, lists and dicts (JSON-serialisable), so that it can be used without any bundle.

Labels and scores:

- **binary**: ``y_true`` and scores of shape ``(N,)``; ``y_true`` holds 0/1 (or booleans).
- **multi-label**: ``y_true`` and scores of shape ``(N, K)``, one column per finding. An optional
  ``mask`` of the same shape tells which labels are known (``True`` = the entry is used); masked-out
  entries are ignored entirely: their labels and scores may be anything, including NaN or the ``-1``
  of an "uncertain" label. A finding without both classes among its used entries has no AUC: it is
  reported as ``None``, excluded from the macro mean, and listed under ``"excluded"``.

The AUC is the Mann-Whitney form (Hanley & McNeil 1982): the probability that a random positive
scores higher than a random negative, ties counting one half. It equals
``sklearn.metrics.roc_auc_score``.

Confidence intervals:

- :func:`bootstrap_auc_ci` and :func:`paired_bootstrap_auc_diff`: percentile bootstrap (Efron &
  Tibshirani 1993, ch. 13). With ``groups`` (e.g. patient ids) whole groups are resampled with
  replacement and contribute all their rows (cluster / patient-level bootstrap, Davison & Hinkley
  1997, sec. 3.8; Field & Welsh 2007): rows of one patient are correlated, and resampling them one
  by one understates the uncertainty.
- :func:`seed_averaged_bootstrap`: the same percentile bootstrap for experiments repeated over
  several seeds (training runs) on one test set: every run is evaluated on the *same* resamples,
  the AUCs are averaged over seeds within each resample, and paired differences between two
  configurations are taken seed by seed.
- :func:`delong_ci` and :func:`delong_test`: asymptotic variance from the structural components of
  DeLong, DeLong & Clarke-Pearson (1988), computed with midranks as in Sun & Xu (2014).

References:

- Hanley JA, McNeil BJ. The meaning and use of the area under a receiver operating characteristic
  (ROC) curve. Radiology 143(1):29-36, 1982.
- DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more correlated receiver
  operating characteristic curves: a nonparametric approach. Biometrics 44(3):837-845, 1988.
- Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under correlated
  receiver operating characteristic curves. IEEE Signal Processing Letters 21(11):1389-1393, 2014.
- Efron B, Tibshirani RJ. An Introduction to the Bootstrap. Chapman & Hall, 1993.
- Davison AC, Hinkley DV. Bootstrap Methods and their Application. Cambridge University Press, 1997.
- Field CA, Welsh AH. Bootstrapping clustered data. J R Stat Soc B 69(3):369-390, 2007.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

__all__ = [
    "auc",
    "multilabel_auc",
    "bootstrap_auc_ci",
    "paired_bootstrap_auc_diff",
    "independent_bootstrap_auc_diff",
    "seed_averaged_bootstrap",
    "delong_ci",
    "delong_test",
    "sensitivity_specificity",
]

logger = logging.getLogger(__name__)

# at most this many (resample x row) weights are held in memory at once
_CHUNK_ELEMENTS = 2_000_000


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------


def _as_float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got values that cannot be converted to float ({e})") from None
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (binary) or 2-D (N, K) (multi-label), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _where(bad: np.ndarray) -> str:
    """Text locating the first True entry of ``bad`` (1-D or 2-D)."""
    first = np.argwhere(bad)[0]
    if bad.ndim == 1:
        return f"index {int(first[0])}"
    return f"row {int(first[0])}, column {int(first[1])}"


def _check_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask has shape {m.shape} but y_true has shape {shape}; they must match")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be boolean (True = label known and used), or 0/1")
        m = m.astype(bool)
    return m


def _check_labels(y: np.ndarray, mask: np.ndarray) -> None:
    bad = mask & ~((y == 0) | (y == 1))
    if bad.any():
        value = y[tuple(np.argwhere(bad)[0])]
        raise ValueError(
            f"y_true must hold only 0 and 1 in the used entries, found {value!r} at {_where(bad)} "
            f"({int(bad.sum())} such entries); mask out unknown labels with `mask`"
        )


def _check_scores(s: np.ndarray, name: str, shape: tuple[int, ...], mask: np.ndarray) -> None:
    if s.shape != shape:
        raise ValueError(f"{name} has shape {s.shape} but y_true has shape {shape}; they must match")
    bad = mask & ~np.isfinite(s)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s) among the used entries, first at {_where(bad)}"
        )


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    return c


def _check_n_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)


def _finding_names(names: Sequence[str] | None, k: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(k)]
    names = [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"names has {len(names)} entries but y_true has {k} columns (findings)")
    if len(set(names)) != k:
        raise ValueError("names must be unique")
    return names


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Integer group id per row (0..G-1, in order of first appearance) and the number of groups."""
    values = groups.tolist() if isinstance(groups, np.ndarray) else list(groups)
    if len(values) != n:
        raise ValueError(f"groups has {len(values)} entries but y_true has {n} rows; they must match")
    index: dict[Hashable, int] = {}
    try:
        inv = np.fromiter((index.setdefault(g, len(index)) for g in values), dtype=np.int64, count=n)
    except TypeError as e:
        raise ValueError(f"groups must hold hashable ids (e.g. patient ids): {e}") from None
    return inv, len(index)


class _Problem:
    """Validated labels, scores and mask, always 2-D ``(N, K)`` (a binary problem has ``K = 1``)."""

    def __init__(self, y_true, scores: dict[str, Any], mask=None, names=None):
        y = _as_float_array(y_true, "y_true")
        self.multi = y.ndim == 2
        m = _check_mask(mask, y.shape)
        self.scores = {}
        for name, s in scores.items():
            arr = _as_float_array(s, name)
            _check_scores(arr, name, y.shape, m)
            self.scores[name] = arr if self.multi else arr[:, None]
        _check_labels(y, m)
        self.y = y if self.multi else y[:, None]
        self.mask = m if self.multi else m[:, None]
        self.n, self.k = self.y.shape
        self.names = _finding_names(names, self.k) if self.multi else ["0"]
        self.rows = [np.flatnonzero(self.mask[:, j]) for j in range(self.k)]
        self.n_pos = [int((self.y[r, j] == 1).sum()) for j, r in enumerate(self.rows)]
        self.n_neg = [len(r) - p for r, p in zip(self.rows, self.n_pos)]
        self.valid = [p > 0 and q > 0 for p, q in zip(self.n_pos, self.n_neg)]
        if not self.multi and not self.valid[0]:
            raise ValueError(_one_class_message(self.n_pos[0], self.n_neg[0]))
        self.included = [j for j in range(self.k) if self.valid[j]]
        self.excluded = [self.names[j] for j in range(self.k) if not self.valid[j]]

    def rank_aucs(self, name: str) -> list[_RankAUC | None]:
        """One weighted-AUC evaluator per finding of score ``name`` (``None`` for excluded findings)."""
        s = self.scores[name]
        return [
            _RankAUC(self.y[r, j], s[r, j]) if self.valid[j] else None for j, r in enumerate(self.rows)
        ]


def _one_class_message(n_pos: int, n_neg: int) -> str:
    cls = "positive (1)" if n_pos else "negative (0)"
    return (
        f"y_true holds only one class among the {n_pos + n_neg} used entries (all {cls}): "
        "the ROC AUC is undefined; it needs at least one positive and one negative"
    )


# ----------------------------------------------------------------------------------------------
# weighted rank AUC: the engine of the point estimates and of the bootstrap
# ----------------------------------------------------------------------------------------------


class _RankAUC:
    """Mann-Whitney AUC of fixed labels and scores under many row-weight vectors at once.

    The scores are sorted once and cut into blocks of tied scores. For a weight vector ``w`` (a
    bootstrap resample is the vector of how many times each row was drawn), with ``P_g`` and ``Q_g``
    the weights of the positives and negatives in block ``g``:

        AUC(w) = sum_g P_g * (sum_{h<g} Q_h + Q_g / 2) / (sum_g P_g * sum_g Q_g)

    which is the Mann-Whitney U statistic (ties count one half) of the data set in which row ``i``
    appears ``w_i`` times, divided by ``n_pos * n_neg`` (Hanley & McNeil 1982). Cost: O(rows) per
    weight vector, vectorised over the vectors.
    """

    def __init__(self, y: np.ndarray, s: np.ndarray):
        order = np.argsort(s, kind="stable")
        s_sorted = s[order]
        self.order = order
        self.pos = y[order] == 1
        self.starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """AUC per row of ``w`` (shape ``(B, rows)``); NaN where the weights leave one class only."""
        w = w[:, self.order]
        p = np.where(self.pos, w, 0.0)
        q = w - p
        pg = np.add.reduceat(p, self.starts, axis=1)
        qg = np.add.reduceat(q, self.starts, axis=1)
        cq = np.cumsum(qg, axis=1)
        num = (pg * (cq - 0.5 * qg)).sum(axis=1)
        den = pg.sum(axis=1) * cq[:, -1]
        out = np.full(w.shape[0], np.nan)
        ok = den > 0
        out[ok] = num[ok] / den[ok]
        return out

    def point(self) -> float:
        return float(self(np.ones((1, len(self.order))))[0])


def _bootstrap_curves(
    problem: _Problem, score_names: Sequence[str], groups, n_resamples: int, seed
) -> tuple[dict[str, np.ndarray], int, str]:
    """AUC of every score and finding on every resample: ``{name: (K, B)}``, NaN where undefined.

    Resample ``b`` draws ``U`` units (rows, or groups when ``groups`` is given) uniformly with
    replacement; each row is weighted by the number of times its unit was drawn. All scores share
    the same resamples, and the same seed gives the same resamples in every function of this module.
    """
    if groups is None:
        inv, n_units, kind = None, problem.n, "row"
    else:
        inv, n_units = _group_index(groups, problem.n)
        kind = "group"
    evaluators = {name: problem.rank_aucs(name) for name in score_names}
    out = {name: np.full((problem.k, n_resamples), np.nan) for name in score_names}
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(problem.n, n_units))
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_units, size=(b, n_units))
        flat = (draws + (np.arange(b) * n_units)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units).astype(np.float64)
        weights = counts if inv is None else counts[:, inv]
        for j in problem.included:
            w = weights[:, problem.rows[j]]
            for name in score_names:
                out[name][j, start : start + b] = evaluators[name][j](w)
    return out, n_units, kind


def _macro(samples: np.ndarray, included: Sequence[int]) -> np.ndarray:
    """Macro mean per resample over the included findings; NaN if any of them is undefined there."""
    return samples[list(included)].mean(axis=0)


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _summary(point: float | None, samples: np.ndarray, confidence: float) -> dict[str, Any]:
    valid = samples[np.isfinite(samples)]
    lo, hi = _percentile_ci(valid, confidence)
    return {
        "auc": point,
        "ci_low": lo,
        "ci_high": hi,
        "std": float(np.std(valid, ddof=1)) if valid.size > 1 else None,
        "n_valid_resamples": int(valid.size),
    }


def _warn_invalid(what: str, n_valid: int, n_resamples: int) -> None:
    if n_valid < n_resamples:
        log = logger.warning if n_valid < 0.9 * n_resamples else logger.debug
        log(
            "%s: %d of %d bootstrap resamples lack one class and were dropped; the interval is "
            "conditional on both classes being present",
            what,
            n_resamples - n_valid,
            n_resamples,
        )


# ----------------------------------------------------------------------------------------------
# point estimates
# ----------------------------------------------------------------------------------------------


def auc(y_true, y_score) -> float:
    """Area under the ROC curve of one binary problem.

    The Mann-Whitney form (Hanley & McNeil 1982): the probability that a randomly chosen positive
    scores higher than a randomly chosen negative, ties counting one half. Equal to
    ``sklearn.metrics.roc_auc_score(y_true, y_score)``.

    Args:
        y_true: labels, shape ``(N,)``, 0/1 or booleans.
        y_score: scores, shape ``(N,)``, finite; higher means more likely positive.

    Returns:
        the AUC in [0, 1].

    Raises:
        ValueError: shapes differ or are not 1-D, ``y_true`` holds other values than 0 and 1 or only
            one class, ``y_score`` holds NaN or infinite values.

    Example::

        >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    y = _as_float_array(y_true, "y_true")
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D for auc (got shape {y.shape}); use multilabel_auc for (N, K) labels")
    problem = _Problem(y, {"y_score": y_score})
    return problem.rank_aucs("y_score")[0].point()


def multilabel_auc(y_true, y_score, mask=None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-finding ROC AUC of a multi-label problem and their macro mean.

    Each finding (column) is scored on its used entries only (``mask``). A finding without both a
    positive and a negative among them has no AUC: it is reported as ``None``, left out of the
    macro mean, and listed in ``"excluded"``.

    Args:
        y_true: labels, shape ``(N, K)``; 0/1 in the used entries, anything in masked-out ones.
        y_score: scores, shape ``(N, K)``; finite in the used entries.
        mask: optional boolean ``(N, K)``, ``True`` = the label is known and used. Default: all used.
        names: optional ``K`` finding names, the keys of the per-finding dicts. Default ``"0"``,
            ``"1"``, ...

    Returns:
        a dict with keys

        - ``"per_finding"``: ``{name: AUC or None}``;
        - ``"macro"``: mean AUC over the findings that have one (``None`` if none has);
        - ``"included"``, ``"excluded"``: the names of the findings in / left out of the macro mean;
        - ``"n_positive"``, ``"n_negative"``: ``{name: count}`` among the used entries.

    Raises:
        ValueError: shapes differ or are not 2-D, bad labels, non-finite used scores, bad ``mask``
            or ``names``.
    """
    y = _as_float_array(y_true, "y_true")
    if y.ndim != 2:
        raise ValueError(
            f"y_true must be 2-D (N, K) for multilabel_auc (got shape {y.shape}); use auc for binary labels"
        )
    problem = _Problem(y, {"y_score": y_score}, mask=mask, names=names)
    evaluators = problem.rank_aucs("y_score")
    per = {n: (e.point() if e is not None else None) for n, e in zip(problem.names, evaluators)}
    used = [v for v in per.values() if v is not None]
    if problem.excluded:
        logger.info("multilabel_auc: findings without both classes, left out of the macro mean: %s", problem.excluded)
    return {
        "per_finding": per,
        "macro": float(np.mean(used)) if used else None,
        "included": [problem.names[j] for j in problem.included],
        "excluded": list(problem.excluded),
        "n_positive": dict(zip(problem.names, problem.n_pos)),
        "n_negative": dict(zip(problem.names, problem.n_neg)),
    }


# ----------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------


def bootstrap_auc_ci(
    y_true,
    y_score,
    *,
    groups=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    mask=None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Percentile-bootstrap confidence interval of the ROC AUC (binary) or macro AUC (multi-label).

    Each resample draws, uniformly with replacement, as many units as there are: rows, or whole
    groups (e.g. patients) when ``groups`` is given, each drawn group contributing all its rows
    (cluster bootstrap, Davison & Hinkley 1997 sec. 3.8; Field & Welsh 2007). The AUC is recomputed
    on the resample (Mann-Whitney, ties one half). Resamples in which a finding lacks a positive or
    a negative have no AUC and are dropped (``n_valid_resamples`` counts those kept; the interval is
    then conditional on both classes being present, and a warning is logged if more than 10 % are
    dropped). The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of
    the kept AUCs (percentile method, Efron & Tibshirani 1993 ch. 13).

    Multi-label: every finding and the macro mean use the same resamples. The macro mean of a
    resample averages the findings that have an AUC on the full data (``"included"``); a resample in
    which any of them lacks a class is dropped from the macro interval.

    Args:
        y_true: labels, ``(N,)`` binary or ``(N, K)`` multi-label (0/1 in the used entries).
        y_score: scores of the same shape, finite in the used entries.
        groups: optional ``N`` group ids (patient ids; any hashable) for cluster resampling.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same resamples here and
            in :func:`paired_bootstrap_auc_diff`.
        mask: optional boolean of the shape of ``y_true``, ``True`` = entry used. Masked-out entries
            are still resampled with their row but never enter an AUC.
        names: multi-label only: ``K`` finding names (default ``"0"``, ``"1"``, ...).

    Returns:
        a dict with keys ``"auc"`` (point estimate on the full data), ``"ci_low"``, ``"ci_high"``,
        ``"std"`` (standard deviation of the resampled AUCs, the bootstrap standard error),
        ``"n_resamples"``, ``"n_valid_resamples"``, ``"confidence"``, ``"resampling"`` (``"row"``
        or ``"group"``) and ``"n_units"`` (rows or groups resampled). Multi-label: the first five
        describe the macro mean, and ``"per_finding"`` maps each name to a dict with ``"auc"``,
        ``"ci_low"``, ``"ci_high"``, ``"std"``, ``"n_valid_resamples"`` (all ``None``/0 for an
        excluded finding); ``"excluded"`` lists the findings without both classes.
        ``ci_low``/``ci_high``/``std`` are ``None`` when no (or, for ``std``, one) resample is valid.

    Raises:
        ValueError: bad shapes, labels, scores, mask, groups, ``n_resamples`` or ``confidence``;
            binary ``y_true`` with one class only; multi-label with no finding having both classes.
    """
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    problem = _Problem(y_true, {"y_score": y_score}, mask=mask, names=names)
    if not problem.included:
        raise ValueError(f"no finding has both classes among its used entries: {problem.excluded}")
    evaluators = problem.rank_aucs("y_score")
    points = [e.point() if e is not None else None for e in evaluators]
    samples, n_units, kind = _bootstrap_curves(problem, ["y_score"], groups, n_resamples, seed)
    curves = samples["y_score"]
    common = {"n_resamples": n_resamples, "confidence": confidence, "resampling": kind, "n_units": n_units}
    if not problem.multi:
        out = _summary(points[0], curves[0], confidence)
        _warn_invalid("bootstrap_auc_ci", out["n_valid_resamples"], n_resamples)
        return {**out, **common}
    macro_point = float(np.mean([points[j] for j in problem.included]))
    out = _summary(macro_point, _macro(curves, problem.included), confidence)
    _warn_invalid("bootstrap_auc_ci (macro)", out["n_valid_resamples"], n_resamples)
    per = {name: _summary(points[j], curves[j], confidence) for j, name in enumerate(problem.names)}
    return {**out, **common, "per_finding": per, "excluded": list(problem.excluded)}


def _diff_summary(
    auc_a: float, auc_b: float, diffs: np.ndarray, confidence: float
) -> dict[str, Any]:
    valid = diffs[np.isfinite(diffs)]
    lo, hi = _percentile_ci(valid, confidence)
    n = int(valid.size)
    if n:
        below = int((valid <= 0).sum())
        above = int((valid >= 0).sum())
        p = min(1.0, 2.0 * min(below + 1, above + 1) / (n + 1))
    else:
        p = None
    return {
        "diff": float(auc_a - auc_b),
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "auc_a": float(auc_a),
        "auc_b": float(auc_b),
        "std": float(np.std(valid, ddof=1)) if n > 1 else None,
        "n_valid_resamples": n,
    }


def paired_bootstrap_auc_diff(
    y_true,
    score_a,
    score_b,
    *,
    groups=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    mask=None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of the difference ``AUC(a) - AUC(b)`` of two models on the same test set.

    Both models are scored on the *same* resamples (rows, or whole groups when ``groups`` is given;
    see :func:`bootstrap_auc_ci`, whose resamples are the same for the same seed), so the correlation
    between them is kept. Multi-label: the difference of the macro mean AUCs (findings with both
    classes on the full data), plus per-finding differences under ``"per_finding"``.

    The interval is the percentile interval of the resampled differences ``d*_1..d*_B'`` (the ``B'``
    resamples in which both classes are present). The two-sided p-value for "no difference" is

        p = min(1, 2 * min(1 + #{d*_b <= 0}, 1 + #{d*_b >= 0}) / (B' + 1))

    i.e. twice the smaller bootstrap tail mass at zero, with the +1 correction that keeps it away
    from 0 for a finite number of resamples (smallest possible value ``2 / (B' + 1)``); it is the
    p-value obtained by inverting the percentile interval (Efron & Tibshirani 1993 ch. 15-16).
    Identical scores give ``d* = 0`` everywhere, hence ``diff = 0``, interval ``[0, 0]`` and ``p = 1``.

    Args:
        y_true: labels, ``(N,)`` or ``(N, K)``.
        score_a: scores of model a, shape of ``y_true``.
        score_b: scores of model b, shape of ``y_true``.
        groups: optional ``N`` group ids (patients) for cluster resampling.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of ``numpy.random.default_rng``.
        mask: optional boolean of the shape of ``y_true``, ``True`` = entry used (by both models).
        names: multi-label only: ``K`` finding names.

    Returns:
        a dict with keys ``"diff"`` (``auc_a - auc_b`` on the full data), ``"ci_low"``,
        ``"ci_high"``, ``"p_value"``, ``"auc_a"``, ``"auc_b"``, ``"std"`` (bootstrap standard error
        of the difference), ``"n_valid_resamples"``, ``"n_resamples"``, ``"confidence"``,
        ``"resampling"``, ``"n_units"``. Multi-label: these describe the macro means, and
        ``"per_finding"`` maps each name to a dict with the same keys as the top level's first eight
        (``None`` for excluded findings); ``"excluded"`` lists the findings without both classes.

    Raises:
        ValueError: as :func:`bootstrap_auc_ci`, naming ``score_a`` or ``score_b`` when they are at fault.
    """
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    problem = _Problem(y_true, {"score_a": score_a, "score_b": score_b}, mask=mask, names=names)
    if not problem.included:
        raise ValueError(f"no finding has both classes among its used entries: {problem.excluded}")
    pa = [e.point() if e is not None else None for e in problem.rank_aucs("score_a")]
    pb = [e.point() if e is not None else None for e in problem.rank_aucs("score_b")]
    samples, n_units, kind = _bootstrap_curves(problem, ["score_a", "score_b"], groups, n_resamples, seed)
    ca, cb = samples["score_a"], samples["score_b"]
    common = {"n_resamples": n_resamples, "confidence": confidence, "resampling": kind, "n_units": n_units}
    return _diff_result("paired_bootstrap_auc_diff", pa, pb, ca, cb, problem.multi, problem.included, problem.names,
                        confidence, n_resamples, common)


def _diff_result(caller: str, pa: Sequence, pb: Sequence, ca: np.ndarray, cb: np.ndarray, multi: bool,
                 compared: Sequence[int], names: Sequence[str], confidence: float, n_resamples: int,
                 common: dict[str, Any]) -> dict[str, Any]:
    """``AUC(a) - AUC(b)`` from point AUCs ``pa``/``pb`` and resampled AUCs ``ca``/``cb`` (``(K, B)``):
    binary, or the macro mean over the ``compared`` findings plus per-finding differences."""
    if not multi:
        out = _diff_summary(pa[0], pb[0], ca[0] - cb[0], confidence)
        _warn_invalid(caller, out["n_valid_resamples"], n_resamples)
        return {**out, **common}
    macro_a = float(np.mean([pa[j] for j in compared]))
    macro_b = float(np.mean([pb[j] for j in compared]))
    out = _diff_summary(macro_a, macro_b, _macro(ca, compared) - _macro(cb, compared), confidence)
    _warn_invalid(f"{caller} (macro)", out["n_valid_resamples"], n_resamples)
    per: dict[str, Any] = {}
    for j, name in enumerate(names):
        if j in compared:
            per[name] = _diff_summary(pa[j], pb[j], ca[j] - cb[j], confidence)
        else:
            per[name] = {key: None for key in ("diff", "ci_low", "ci_high", "p_value", "auc_a", "auc_b", "std")} | {
                "n_valid_resamples": 0}
    excluded = [name for j, name in enumerate(names) if j not in compared]
    return {**out, **common, "per_finding": per, "excluded": excluded}


def independent_bootstrap_auc_diff(
    y_a,
    score_a,
    y_b,
    score_b,
    *,
    groups_a=None,
    groups_b=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    mask_a=None,
    mask_b=None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Bootstrap of ``AUC(a) - AUC(b)`` where a and b are two *different* test sets (e.g. the test set
    of the training distribution and one from another hospital): the distribution-shift AUC drop.

    Each test set is resampled on its own (rows, or whole groups such as patients; see
    :func:`bootstrap_auc_ci`), from two independent streams spawned from ``seed``; resample ``b``'s
    difference is ``AUC*_a,b - AUC*_b,b``. The interval and the two-sided p-value are those of
    :func:`paired_bootstrap_auc_diff` applied to these differences. Multi-label: the macro means run
    over the findings that have both classes in *both* test sets (the others are listed under
    ``"excluded"``), plus per-finding differences.

    Args:
        y_a, score_a: labels and scores of test set a, ``(N_a,)`` or ``(N_a, K)``.
        y_b, score_b: the same for test set b (same ``K``, same finding order).
        groups_a, groups_b: optional group ids (patients) of each test set.
        n_resamples, confidence, seed: as :func:`bootstrap_auc_ci`.
        mask_a, mask_b: optional masks of used entries (unknown labels), as :func:`bootstrap_auc_ci`.
        names: multi-label only: the ``K`` finding names.

    Returns:
        the keys of :func:`paired_bootstrap_auc_diff` (``"diff"`` = ``auc_a - auc_b``), with
        ``"resampling"`` and ``"n_units"`` as pairs ``[a, b]``.

    Raises:
        ValueError: as :func:`bootstrap_auc_ci`; different numbers of outputs; no finding with both
            classes in both sets.
    """
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    pa_problem = _Problem(y_a, {"s": score_a}, mask=mask_a, names=names)
    pb_problem = _Problem(y_b, {"s": score_b}, mask=mask_b, names=names)
    if pa_problem.k != pb_problem.k or pa_problem.multi != pb_problem.multi:
        raise ValueError(f"the two test sets have different outputs: {pa_problem.k} vs {pb_problem.k}")
    both = [j for j in range(pa_problem.k) if pa_problem.valid[j] and pb_problem.valid[j]]
    if not both:
        raise ValueError("no output has both classes in both test sets")
    pa = [e.point() if e is not None else None for e in pa_problem.rank_aucs("s")]
    pb = [e.point() if e is not None else None for e in pb_problem.rank_aucs("s")]
    seed_a, seed_b = np.random.SeedSequence(seed).spawn(2)
    ca, n_a, kind_a = _bootstrap_curves(pa_problem, ["s"], groups_a, n_resamples, seed_a)
    cb, n_b, kind_b = _bootstrap_curves(pb_problem, ["s"], groups_b, n_resamples, seed_b)
    ca, cb = ca["s"], cb["s"]
    common = {"n_resamples": n_resamples, "confidence": confidence, "resampling": [kind_a, kind_b],
              "n_units": [n_a, n_b]}
    return _diff_result("independent_bootstrap_auc_diff", pa, pb, ca, cb, pa_problem.multi, both, pa_problem.names,
                        confidence, n_resamples, common)


def seed_averaged_bootstrap(
    y_true,
    runs: Mapping[Hashable, Mapping[Hashable, Any]],
    *,
    comparisons: Sequence[tuple[Hashable, Hashable]] = (),
    groups=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    mask=None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Seed-averaged AUCs and paired differences of repeated experiments, on shared bootstrap resamples.

    ``runs`` maps a configuration (e.g. ``("simclr", "linear", 0.01)``) to its runs, ``{seed:
    scores}``, all scored on the same test set ``y_true``. The resamples (rows, or whole groups
    when ``groups`` is given; see :func:`bootstrap_auc_ci`) are drawn *once*, and every run is
    evaluated on all of them: the same seed gives the same resamples as :func:`bootstrap_auc_ci`
    and :func:`paired_bootstrap_auc_diff`.

    For a configuration with seeds ``s = 1..S``, ``AUC_s`` the AUC of run ``s`` on the full test
    set (macro mean over the findings with both classes for multi-label ``y_true``, as in
    :func:`multilabel_auc`) and ``AUC*_s,b`` on resample ``b``:

    - ``auc_mean = mean_s AUC_s``; ``auc_sd`` the standard deviation over seeds (``ddof=1``;
      ``None`` for one seed): the training variability (which labelled subset, which initial head,
      which batch order);
    - ``ci_low``/``ci_high``: percentile interval of ``mean_s AUC*_s,b`` over the resamples ``b``:
      the test-set sampling uncertainty of the seed mean; ``std`` is its bootstrap standard error.

    For a comparison ``(a, b)`` of two configurations with the same seeds (seed ``s`` of ``a`` is
    paired with seed ``s`` of ``b``: e.g. the same labelled subset, two initialisations):

    - ``diff = mean_s (AUC_a,s - AUC_b,s)``; the interval is the percentile interval of
      ``d*_b = mean_s (AUC*_a,s,b - AUC*_b,s,b)``, and the two-sided p-value is that of
      :func:`paired_bootstrap_auc_diff`, ``min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B' + 1))``.
      With one seed per configuration this is exactly :func:`paired_bootstrap_auc_diff`.

    Whether a resample has both classes depends on the labels only, so it is valid for every run
    or for none; invalid resamples are dropped as in :func:`bootstrap_auc_ci`.

    Args:
        y_true: labels, ``(N,)`` or ``(N, K)``.
        runs: ``{configuration: {seed: scores}}``, scores of the shape of ``y_true``; configuration
            and seed keys are any hashables (they are returned as given).
        comparisons: pairs ``(a, b)`` of configuration keys, for ``a - b``; both must have the same seeds.
        groups: optional ``N`` group ids (patients) for cluster resampling.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the intervals, in (0, 1).
        seed: seed of ``numpy.random.default_rng`` (the bootstrap's, not the runs').
        mask: optional boolean of the shape of ``y_true``, ``True`` = entry used (by every run).
        names: multi-label only: ``K`` finding names.

    Returns:
        a dict with keys

        - ``"configurations"``: a list, in the order of ``runs``, of dicts with ``"key"``,
          ``"seeds"`` (list), ``"per_seed_auc"`` (list, same order), ``"n_seeds"``, ``"auc_mean"``,
          ``"auc_sd"``, ``"ci_low"``, ``"ci_high"``, ``"std"``, ``"n_valid_resamples"``;
        - ``"comparisons"``: a list, in the order of ``comparisons``, of dicts with ``"a"``, ``"b"``,
          ``"seeds"``, ``"per_seed_diff"``, ``"n_seeds"``, ``"diff"``, ``"ci_low"``, ``"ci_high"``,
          ``"p_value"``, ``"auc_a"``, ``"auc_b"`` (seed means), ``"std"``, ``"n_valid_resamples"``;
        - ``"n_resamples"``, ``"confidence"``, ``"resampling"``, ``"n_units"``; multi-label also
          ``"included"`` and ``"excluded"`` (findings in / out of the macro mean).

    Raises:
        ValueError: as :func:`bootstrap_auc_ci`; an empty ``runs`` or a configuration without runs;
            a comparison naming an unknown configuration or pairing configurations with different seeds.
    """
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    if not runs:
        raise ValueError("runs is empty: give at least one configuration with at least one seed")
    flat: dict[str, Any] = {}
    index: dict[Hashable, list[tuple[Hashable, str]]] = {}
    for config, per_seed in runs.items():
        if not per_seed:
            raise ValueError(f"configuration {config!r} has no runs")
        index[config] = []
        for s, scores in per_seed.items():
            name = f"configuration {config!r}, seed {s!r}"
            flat[name] = scores
            index[config].append((s, name))
    for a, b in comparisons:
        for c in (a, b):
            if c not in index:
                raise ValueError(f"comparison ({a!r}, {b!r}) names {c!r}, which is not in runs {list(index)}")
        if {s for s, _ in index[a]} != {s for s, _ in index[b]}:
            raise ValueError(f"comparison ({a!r}, {b!r}) pairs runs seed by seed, but their seeds differ: "
                             f"{[s for s, _ in index[a]]} vs {[s for s, _ in index[b]]}")
    problem = _Problem(y_true, flat, mask=mask, names=names)
    if not problem.included:
        raise ValueError(f"no finding has both classes among its used entries: {problem.excluded}")
    inc = problem.included
    points = {}
    for name in flat:
        evaluators = problem.rank_aucs(name)
        points[name] = float(np.mean([evaluators[j].point() for j in inc]))
    samples, n_units, kind = _bootstrap_curves(problem, list(flat), groups, n_resamples, seed)
    curves = {name: _macro(c, inc) for name, c in samples.items()}  # (B,) per run

    configurations = []
    for config, members in index.items():
        aucs = [points[name] for _, name in members]
        mean_curve = np.mean([curves[name] for _, name in members], axis=0)
        summary = _summary(float(np.mean(aucs)), mean_curve, confidence)
        _warn_invalid(f"seed_averaged_bootstrap ({config!r})", summary["n_valid_resamples"], n_resamples)
        configurations.append({
            "key": config,
            "seeds": [s for s, _ in members],
            "per_seed_auc": aucs,
            "n_seeds": len(aucs),
            "auc_mean": summary["auc"],
            "auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            "ci_low": summary["ci_low"],
            "ci_high": summary["ci_high"],
            "std": summary["std"],
            "n_valid_resamples": summary["n_valid_resamples"],
        })
    compared = []
    for a, b in comparisons:
        names_b = dict(index[b])
        pairs = [(s, name, names_b[s]) for s, name in index[a]]
        diffs = np.mean([curves[na] - curves[nb] for _, na, nb in pairs], axis=0)
        auc_a = float(np.mean([points[na] for _, na, _ in pairs]))
        auc_b = float(np.mean([points[nb] for _, _, nb in pairs]))
        out = _diff_summary(auc_a, auc_b, diffs, confidence)
        out["diff"] = float(np.mean([points[na] - points[nb] for _, na, nb in pairs]))
        compared.append({
            "a": a,
            "b": b,
            "seeds": [s for s, _, _ in pairs],
            "per_seed_diff": [points[na] - points[nb] for _, na, nb in pairs],
            "n_seeds": len(pairs),
            **out,
        })
    result = {
        "configurations": configurations,
        "comparisons": compared,
        "n_resamples": n_resamples,
        "confidence": confidence,
        "resampling": kind,
        "n_units": n_units,
    }
    if problem.multi:
        result["included"] = [problem.names[j] for j in inc]
        result["excluded"] = list(problem.excluded)
    return result


# ----------------------------------------------------------------------------------------------
# DeLong
# ----------------------------------------------------------------------------------------------


def _binary_problem(y_true, scores: dict[str, Any], caller: str) -> _Problem:
    y = _as_float_array(y_true, "y_true")
    if y.ndim != 1:
        raise ValueError(f"{caller} takes one binary problem: y_true must be 1-D, got shape {y.shape}")
    problem = _Problem(y, scores)
    if problem.n_pos[0] < 2 or problem.n_neg[0] < 2:
        raise ValueError(
            f"{caller} needs at least 2 positives and 2 negatives in y_true to estimate a variance, "
            f"got {problem.n_pos[0]} and {problem.n_neg[0]}"
        )
    return problem


def _structural_components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components ``V10`` (one per positive) and ``V01`` (one per negative).

    With positives' scores ``X_1..X_m``, negatives' ``Y_1..Y_n`` and ``psi(x, y) = 1 if x > y,
    1/2 if x = y, 0 otherwise`` (DeLong et al. 1988, eq. 2-3)::

        V10(X_i) = (1/n) sum_j psi(X_i, Y_j)      V01(Y_j) = (1/m) sum_i psi(X_i, Y_j)

    computed from midranks (Sun & Xu 2014): with ``T_z`` the midrank of a score in the pooled sample
    and ``T_x``/``T_y`` its midrank within the positives/negatives, ``sum_j psi(X_i, Y_j) = T_z(X_i)
    - T_x(X_i)`` and ``sum_i psi(X_i, Y_j) = m - (T_z(Y_j) - T_y(Y_j))``.
    """
    x = s[y == 1]
    yn = s[y == 0]
    m, n = x.size, yn.size
    tz = rankdata(np.concatenate([x, yn]))  # midranks
    v10 = (tz[:m] - rankdata(x)) / n
    v01 = 1.0 - (tz[m:] - rankdata(yn)) / m
    return v10, v01


def delong_ci(y_true, score, confidence: float = 0.95) -> dict[str, Any]:
    """ROC AUC with an asymptotic confidence interval from DeLong's variance.

    The variance of the AUC estimate is ``S10 / m + S01 / n`` where ``S10`` and ``S01`` are the
    sample variances of the structural components ``V10`` (over the ``m`` positives) and ``V01``
    (over the ``n`` negatives) (DeLong, DeLong & Clarke-Pearson 1988; midrank computation after Sun
    & Xu 2014). The interval is the normal (Wald) interval ``auc -/+ z * se``, clipped to [0, 1].
    A perfectly separating score has variance 0 and the interval ``[1, 1]``.

    Args:
        y_true: binary labels, shape ``(N,)``, with at least 2 positives and 2 negatives.
        score: scores, shape ``(N,)``, finite.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        a dict with keys ``"auc"``, ``"var"``, ``"se"``, ``"ci_low"``, ``"ci_high"``,
        ``"confidence"``, ``"n_positive"``, ``"n_negative"``.

    Raises:
        ValueError: bad shapes, labels or scores, fewer than 2 positives or negatives, bad confidence.
    """
    confidence = _check_confidence(confidence)
    problem = _binary_problem(y_true, {"score": score}, "delong_ci")
    v10, v01 = _structural_components(problem.y[:, 0], problem.scores["score"][:, 0])
    m, n = v10.size, v01.size
    a = float(v10.mean())
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    se = float(np.sqrt(max(var, 0.0)))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    return {
        "auc": a,
        "var": var,
        "se": se,
        "ci_low": float(max(0.0, a - z * se)),
        "ci_high": float(min(1.0, a + z * se)),
        "confidence": confidence,
        "n_positive": m,
        "n_negative": n,
    }


def delong_test(y_true, score_a, score_b, *, confidence: float = 0.95) -> dict[str, Any]:
    """DeLong's test for the difference of two correlated ROC AUCs (same cases, two models).

    With structural components ``V10``/``V01`` of both models (see :func:`delong_ci`), the 2 x 2
    covariance of the two AUC estimates is ``S = S10 / m + S01 / n``, ``S10`` and ``S01`` the sample
    covariance matrices of the components over the positives and negatives (DeLong, DeLong &
    Clarke-Pearson 1988, eq. 5; fast midrank computation after Sun & Xu 2014). The statistic is

        z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov)

    (the variance of the difference is computed directly from the differences of the components,
    which is exactly 0 for identical scores), compared with the standard normal: two-sided
    ``p = 2 * (1 - Phi(|z|))``. When the variance of the difference is 0 (e.g. identical scores, or
    two perfect classifiers) ``z`` is undefined and returned as ``None``, with ``p_value = 1`` if the
    difference is 0 and 0 otherwise.

    Args:
        y_true: binary labels, shape ``(N,)``, with at least 2 positives and 2 negatives.
        score_a: scores of model a, shape ``(N,)``, finite.
        score_b: scores of model b, shape ``(N,)``, finite.
        confidence: coverage of the Wald interval of the difference.

    Returns:
        a dict with keys ``"auc_a"``, ``"auc_b"``, ``"diff"`` (``auc_a - auc_b``), ``"z"``,
        ``"p_value"``, ``"var_a"``, ``"var_b"``, ``"cov"``, ``"var_diff"``, ``"ci_low"``,
        ``"ci_high"`` (Wald interval of the difference), ``"confidence"``, ``"n_positive"``,
        ``"n_negative"``.

    Raises:
        ValueError: bad shapes, labels or scores, fewer than 2 positives or negatives, bad confidence.
    """
    confidence = _check_confidence(confidence)
    problem = _binary_problem(y_true, {"score_a": score_a, "score_b": score_b}, "delong_test")
    y = problem.y[:, 0]
    a10, a01 = _structural_components(y, problem.scores["score_a"][:, 0])
    b10, b01 = _structural_components(y, problem.scores["score_b"][:, 0])
    m, n = a10.size, a01.size
    s10 = np.cov(np.stack([a10, b10]), ddof=1)
    s01 = np.cov(np.stack([a01, b01]), ddof=1)
    cov = s10 / m + s01 / n
    d10, d01 = a10 - b10, a01 - b01
    diff = float(d10.mean())
    var_diff = float(np.var(d10, ddof=1) / m + np.var(d01, ddof=1) / n)
    scale = float(cov[0, 0] + cov[1, 1])
    if var_diff <= 0.0 or var_diff <= 1e-14 * scale:  # no spread: rounding noise at most
        z = None
        p = 1.0 if abs(diff) <= 1e-12 else 0.0
        se = 0.0
    else:
        se = float(np.sqrt(var_diff))
        z = diff / se
        p = float(min(1.0, 2.0 * norm.sf(abs(z))))
    q = float(norm.ppf(0.5 + confidence / 2.0))
    return {
        "auc_a": float(a10.mean()),
        "auc_b": float(b10.mean()),
        "diff": diff,
        "z": None if z is None else float(z),
        "p_value": p,
        "var_a": float(cov[0, 0]),
        "var_b": float(cov[1, 1]),
        "cov": float(cov[0, 1]),
        "var_diff": var_diff,
        "ci_low": diff - q * se,
        "ci_high": diff + q * se,
        "confidence": confidence,
        "n_positive": m,
        "n_negative": n,
    }


# ----------------------------------------------------------------------------------------------
# operating point
# ----------------------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def sensitivity_specificity(y_true, y_score, threshold: float = 0.5) -> dict[str, Any]:
    """Confusion counts and rates at one operating point: predicted positive iff ``score >= threshold``.

    Args:
        y_true: binary labels, shape ``(N,)``.
        y_score: scores (e.g. probabilities), shape ``(N,)``, finite.
        threshold: decision threshold; a score equal to it counts as positive.

    Returns:
        a dict with keys ``"tp"``, ``"fp"``, ``"tn"``, ``"fn"`` (ints), ``"sensitivity"``
        (recall, tp / (tp + fn)), ``"specificity"`` (tn / (tn + fp)), ``"ppv"`` (precision,
        tp / (tp + fp)), ``"npv"`` (tn / (tn + fn)), ``"accuracy"`` and ``"threshold"``. A rate
        whose denominator is 0 is ``None``.

    Raises:
        ValueError: bad shapes, labels or scores, or a non-finite threshold.
    """
    y = _as_float_array(y_true, "y_true")
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D for sensitivity_specificity, got shape {y.shape}")
    s = _as_float_array(y_score, "y_score")
    mask = np.ones(y.shape, dtype=bool)
    _check_scores(s, "y_score", y.shape, mask)
    _check_labels(y, mask)
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold}")
    pred = s >= t
    pos = y == 1
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    tn = int((~pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "threshold": t,
    }
