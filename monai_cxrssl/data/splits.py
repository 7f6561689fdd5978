"""Patient-level splits, leakage reports and nested label-fraction subsets of datalists.

Images of one patient are strongly correlated; a split that puts them on both sides of the
train/test boundary inflates test scores. :func:`patient_split` splits by patient,
:func:`leakage_report` finds patients present in more than one split of an existing datalist,
and :func:`label_fraction` draws the labelled subsets (1 %, 10 %, 100 %...) of the usual
"SSL pretraining, then fine-tuning with few labels" evaluation.

Stratification uses ``entry[stratify_key]``. :func:`patient_split` balances the count of every
class, or of every finding (multi-label). :func:`label_fraction` draws from one *stratum* per entry:

- an int or str label: the stratum is the label itself;
- a multi-hot list (multi-label; also used when ``stratify_key="label"`` is absent but the entry
  has ``labels``): the index of the entry's *rarest* positive finding (rarity counted over the
  given entries; ties go to the lower index), or ``-1`` when no finding is positive. This spreads
  the rare findings over the splits, which stratifying by "any finding" would not;
- ``stratify_key=None``: no stratification.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from monai_cxrssl.data.datalist import SPLIT_KEYS, require_split_keys
from monai_cxrssl.exceptions import DatalistError

__all__ = ["patient_split", "leakage_report", "format_leakage_report", "label_fraction"]

logger = logging.getLogger(__name__)


def _is_multi_hot(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _label_values(items: Sequence[Mapping], stratify_key: str | None) -> list:
    """The value each entry is stratified by (``None`` when it has none)."""
    if stratify_key is None:
        return [None] * len(items)
    values = []
    for item in items:
        value = item.get(stratify_key)
        if value is None and stratify_key == "label":
            value = item.get("labels")
        values.append(value)
    return values


def _multi_hot(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(positive, is_multi)``: each multi-hot value's positives as one boolean matrix (rows of other values and
    shorter vectors padded with False), and which rows are multi-hot; ``None`` when no value is. One array
    conversion for the usual datalist whose vectors all have one width (hundreds of thousands of entries)."""
    is_multi = np.fromiter((_is_multi_hot(v) for v in values), dtype=bool, count=len(values))
    if not is_multi.any():
        return None
    rows = [values[i] for i in np.flatnonzero(is_multi)]
    try:
        dense = np.asarray(rows, dtype=float)
    except ValueError:  # vectors of several widths
        dense = None
    if dense is None or dense.ndim != 2:
        width = max(len(v) for v in rows)
        dense = np.zeros((len(rows), width))
        for j, v in enumerate(rows):
            dense[j, : len(v)] = np.asarray(v, dtype=float).ravel()
    positive = np.zeros((len(values), dense.shape[1]), dtype=bool)
    positive[is_multi] = dense > 0
    return positive, is_multi


def _strata(values: Sequence[Any]) -> list[Hashable]:
    """One hashable stratum per entry (see the module docstring)."""
    multi = _multi_hot(values)
    if multi is None:
        return list(values)
    positive, is_multi = multi
    counts = positive.sum(0)
    # the rarest positive finding of each entry (the first of equally rare ones), -1 for none
    rarest = np.where(positive, counts[None, :], np.iinfo(np.int64).max).argmin(1)
    rarest = np.where(positive.any(1), rarest, -1)
    return [int(r) if m else v for r, m, v in zip(rarest.tolist(), is_multi.tolist(), values)]


def _balance_features(values: Sequence[Any]) -> np.ndarray:
    """Per-entry counts that :func:`patient_split` balances across splits, shape (entries, columns).

    Single-label: one-hot of the label. Multi-label: the multi-hot vector plus a "no finding"
    column, so that every finding (not only one stratum per entry) is spread over the splits.
    """
    multi = _multi_hot(values)
    if multi is not None:
        positive = multi[0]
        return np.concatenate([positive, ~positive.any(1, keepdims=True)], axis=1).astype(float)
    index = {s: j for j, s in enumerate(dict.fromkeys(values))}
    out = np.zeros((len(values), len(index)))
    out[np.arange(len(values)), [index[v] for v in values]] = 1
    return out


def _groups(items: Sequence[Mapping], group_key: str | None, caller: str) -> list[Hashable]:
    """Group id per entry; entries without one are their own group (with a warning)."""
    groups: list[Hashable] = []
    missing = 0
    for i, item in enumerate(items):
        gid = item.get(group_key) if group_key else None
        if gid is None or gid == "":
            missing += 1
            gid = ("__no_group__", i)
        groups.append(gid)
    if group_key and missing:
        logger.warning(
            "%s: %d of %d entries have no '%s'; each of them is taken as its own patient",
            caller,
            missing,
            len(items),
            group_key,
        )
    return groups


def _members(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Indices of the entries of each key, keys in order of first appearance."""
    out: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def _unit_of(units: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """The index of each entry's unit (patient, or the entry itself), from the units' member lists."""
    out = np.empty(n, dtype=np.int64)
    for u, idxs in enumerate(units):
        out[idxs] = u
    return out


def _require_items(items: Sequence[Mapping], caller: str) -> list:
    items = list(items)
    if not items:
        raise DatalistError(f"{caller}: the list of entries is empty: expected at least one entry")
    bad = next((i for i, e in enumerate(items) if not isinstance(e, Mapping)), None)
    if bad is not None:
        raise DatalistError(f"{caller}: entry {bad} is a {type(items[bad]).__name__}, expected a dict")
    return items


def patient_split(
    items: Sequence[Mapping[str, Any]],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_key: str | None = "patient_id",
    stratify_key: str | None = "label",
) -> dict[str, list]:
    """Split entries into training/validation/test by patient, stratified by label.

    No patient (``entry[group_key]``) ends up in two splits. Entries without a patient id are
    each their own group (a warning is logged).

    Algorithm (greedy, deterministic for a seed): patients are visited largest first (ties in a
    seeded random order); each goes to the split where it most reduces the squared deviation of
    the balanced counts from their targets (``fraction * total``), each count weighted by 1 / its
    total so that rare classes weigh as much as common ones. The balanced counts are the entries
    per class (single-label), or the positives of every finding plus the entries without any
    finding (multi-label). Fractions are thus met in entries (not patients), per class or finding,
    up to the granularity of patients (a finding seen in one patient only cannot be spread).

    Args:
        items: the entries (dicts).
        val_fraction: fraction of entries for ``"validation"``.
        test_fraction: fraction of entries for ``"test"``; the rest is ``"training"``.
        seed: seed of the tie-breaking order; different seeds give different splits.
        group_key: the patient key; ``None`` splits by entry.
        stratify_key: the key stratified by (see the module docstring); ``None``: none.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, the given entries (not
        copies) in their original order.

    Raises:
        ValueError: a fraction is negative, or they sum to 1 or more.
        DatalistError: ``items`` is empty or holds a non-dict.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction and test_fraction must be >= 0 with a sum < 1, got {val_fraction} and {test_fraction}"
        )
    items = _require_items(items, "patient_split")
    features = _balance_features(_label_values(items, stratify_key))
    members = list(_members(_groups(items, group_key, "patient_split")).values())
    counts = np.zeros((len(members), features.shape[1]))
    np.add.at(counts, _unit_of(members, len(items)), features)
    total = counts.sum(0)
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    target = fractions[:, None] * total[None, :]
    weight = 1.0 / np.maximum(total, 1.0)
    current = np.zeros_like(target)

    order = np.random.default_rng(seed).permutation(len(members))
    order = sorted(order, key=lambda g: -len(members[g]))  # stable: the seeded order breaks ties
    assignment = np.empty(len(items), dtype=int)
    for g in order:
        c = counts[g]
        cost = (c * weight * (2.0 * (current - target) + c)).sum(1)  # change of the weighted squared deviation
        cost[fractions == 0] = np.inf
        s = int(np.argmin(cost))
        current[s] += c
        assignment[members[g]] = s

    out = {key: [item for item, a in zip(items, assignment) if a == s] for s, key in enumerate(SPLIT_KEYS)}
    for s, key in enumerate(SPLIT_KEYS):
        if fractions[s] > 0 and not out[key]:
            logger.warning(
                "patient_split: '%s' is empty (%d entries, %d patients, fraction %.3g)",
                key,
                len(items),
                len(members),
                fractions[s],
            )
    return out


def leakage_report(datalist: Mapping[str, Any], group_key: str = "patient_id") -> dict[str, Any]:
    """Patients whose entries appear in more than one split of a datalist.

    Args:
        datalist: a datalist dict; every key holding a list of entries is a split
            (``training``, ``validation``, ``test``...).
        group_key: the patient key. Entries without it cannot leak; they are counted apart.

    Returns:
        a dict with

        - ``group_key``;
        - ``splits``: ``{split: {"n_items": ..., "n_patients": ...}}``;
        - ``n_patients``: distinct patients over all splits;
        - ``n_patients_leaking``: patients in more than one split;
        - ``n_items_leaking``: entries of those patients;
        - ``n_items_without_group``: entries without ``group_key``;
        - ``patients``: ``{patient_id: [splits]}`` for the leaking patients;
        - ``pairs``: ``{"training/validation": n, ...}``, the leaking patients shared by each pair
          of splits (a patient in three splits counts in three pairs).

    Raises:
        DatalistError: ``datalist`` is not a dict or has no list of entries.
    """
    keys = require_split_keys(datalist, "leakage_report")
    where: dict[str, list[str]] = {}
    splits: dict[str, dict[str, int]] = {}
    n_without = 0
    for key in keys:
        pids = set()
        for entry in datalist[key]:
            pid = entry.get(group_key)
            if pid is None or pid == "":
                n_without += 1
                continue
            pid = str(pid)
            pids.add(pid)
            if key not in where.setdefault(pid, []):
                where[pid].append(key)
        splits[key] = {"n_items": len(datalist[key]), "n_patients": len(pids)}
    leaking = {pid: sp for pid, sp in where.items() if len(sp) > 1}
    n_items_leaking = sum(
        1 for key in keys for e in datalist[key] if e.get(group_key) is not None and str(e[group_key]) in leaking
    )
    pairs = {f"{a}/{b}": sum(1 for sp in leaking.values() if a in sp and b in sp) for a, b in combinations(keys, 2)}
    return {
        "group_key": group_key,
        "splits": splits,
        "n_patients": len(where),
        "n_patients_leaking": len(leaking),
        "n_items_leaking": n_items_leaking,
        "n_items_without_group": n_without,
        "patients": leaking,
        "pairs": pairs,
    }


def format_leakage_report(report: Mapping[str, Any], max_patients: int = 20) -> str:
    """Human-readable text of a :func:`leakage_report`, listing at most ``max_patients`` patients."""
    lines = []
    n, k = report["n_patients"], report["n_patients_leaking"]
    if k:
        lines.append(
            f"LEAKAGE: {k} of {n} patients ({report['n_items_leaking']} images) are in more than one split "
            f"(by '{report['group_key']}')"
        )
    else:
        lines.append(f"no leakage: none of the {n} patients is in more than one split (by '{report['group_key']}')")
    for key, s in report["splits"].items():
        lines.append(f"  {key}: {s['n_items']} images, {s['n_patients']} patients")
    if report["n_items_without_group"]:
        lines.append(f"  {report['n_items_without_group']} images have no '{report['group_key']}' (not checked)")
    if k:
        lines.append("patients shared by each pair of splits:")
        lines.extend(f"  {pair}: {m}" for pair, m in report["pairs"].items())
        lines.append("leaking patients:")
        shown = list(report["patients"].items())[:max_patients]
        lines.extend(f"  {pid}: {', '.join(sp)}" for pid, sp in shown)
        if k > len(shown):
            lines.append(f"  ... and {k - len(shown)} more")
    return "\n".join(lines)


def label_fraction(
    items: Sequence[Mapping[str, Any]],
    fraction: float,
    *,
    seed: int = 0,
    stratify_key: str | None = "label",
    group_key: str | None = None,
) -> list:
    """A stratified, nested random subset of ``fraction`` of the entries (for few-label fine-tuning).

    Draw: each stratum (see the module docstring) gets a fixed random permutation from ``seed``,
    and the first ``max(1, round(fraction * n_stratum))`` of it are taken, so every class present
    is drawn at least once. Because only the prefix length depends on ``fraction``, the subsets
    are NESTED: for one seed, the draw at a smaller fraction is a subset of the draw at a larger
    one (1 % within 10 % within 100 %). Different seeds give different draws.

    Multi-label: besides the strata (rarest positive finding), every finding with at least one
    positive is guaranteed: if the first entry of every stratum does not already cover a finding,
    the first entry with that finding in a second seeded permutation is added. These extra entries
    do not depend on ``fraction``, which keeps the draws nested; at very small fractions the subset
    can thus exceed ``fraction`` by a few entries.

    Args:
        items: the entries (typically ``datalist["training"]``).
        fraction: in (0, 1]; 1 returns every entry.
        seed: seed of the permutations.
        stratify_key: the key stratified by; ``None``: a plain random subset (still >= 1 entry).
        group_key: when given (e.g. ``"patient_id"``), whole patients are drawn: the fraction then
            counts patients, each patient in the stratum of its rarest entry.

    Returns:
        the drawn entries (not copies) in their original order.

    Raises:
        ValueError: ``fraction`` is not in (0, 1].
        DatalistError: ``items`` is empty or holds a non-dict.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    items = _require_items(items, "label_fraction")
    values = _label_values(items, stratify_key)
    strata = _strata(values)
    # units: patients (group_key) or single entries
    if group_key:
        units = list(_members(_groups(items, group_key, "label_fraction")).values())
    else:
        units = [[i] for i in range(len(items))]
    stratum_size = {s: 0 for s in dict.fromkeys(strata)}
    for s in strata:
        stratum_size[s] += 1
    rank = {s: j for j, s in enumerate(stratum_size)}  # ties between equally rare strata: first seen
    unit_stratum = [min((strata[i] for i in u), key=lambda s: (stratum_size[s], rank[s])) for u in units]
    by_stratum = _members(unit_stratum)  # strata in order of first appearance: a fixed rng consumption

    rng = np.random.default_rng(seed)
    chosen: set[int] = set()  # unit indices
    always: set[int] = set()  # drawn at every fraction
    for unit_ids in by_stratum.values():
        perm = [unit_ids[j] for j in rng.permutation(len(unit_ids))]
        chosen.update(perm[: max(1, round(fraction * len(perm)))])
        always.add(perm[0])

    multi = _multi_hot(values)
    if multi is not None:
        unit_hot = np.zeros((len(units), multi[0].shape[1]), dtype=np.int64)
        np.add.at(unit_hot, _unit_of(units, len(items)) if group_key else np.arange(len(items)), multi[0])
        unit_hot = unit_hot > 0
        covered = unit_hot[sorted(always)].any(0)
        order = rng.permutation(len(units))
        for f in np.argsort(unit_hot.sum(0), kind="stable"):  # rarest finding first
            if unit_hot[:, f].any() and not covered[f]:
                u = next(int(u) for u in order if unit_hot[u, f])
                chosen.add(u)
                covered |= unit_hot[u]
    picked = sorted(i for u in chosen for i in units[u])
    return [items[i] for i in picked]
