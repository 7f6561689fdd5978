"""Parsing and checking the options before anything trains: inits, overrides, fractions and seeds, the data, a study
folder's earlier settings."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_cxrssl.exceptions import CXRSSLError

from .contract import CONTROLLED, RANDOM, StudyError, _INIT_NAME, _say


def parse_init(text: str) -> tuple[str, str | None]:
    """``"random"`` -> ``("random", None)``; ``"name=path"`` -> ``(name, path)``.

    Raises:
        StudyError: a bare path, an empty part, a name with characters other than letters, digits,
            ``_``, ``.``, ``+`` (``-`` separates the parts of run folder names), or ``random=path``.
    """
    text = str(text).strip()
    if text == RANDOM:
        return RANDOM, None
    if "=" not in text:
        raise StudyError(f"--init {text!r}: expected 'random' or NAME=PATH (e.g. simclr=bundles/simclr_cxr/models/backbone.pt); "
                         "the name labels the init in run folders and in the table")
    name, path = (part.strip() for part in text.split("=", 1))
    if not name or not path:
        raise StudyError(f"--init {text!r}: both NAME and PATH are needed in NAME=PATH")
    if name == RANDOM:
        raise StudyError(f"--init {text!r}: 'random' names the random initialisation (no file); give this file another name")
    if not _INIT_NAME.match(name):
        raise StudyError(f"--init {text!r}: the name {name!r} may hold only letters, digits, '_', '.' and '+', "
                         "starting with a letter or digit ('-' separates the parts of run folder names)")
    return name, path


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["patience=3", "device=cuda"]`` -> ``{"patience": 3, "device": "cuda"}`` (values read as JSON
    when they are JSON: numbers, ``true``/``false``, ``null``, lists; else kept as text).

    Raises:
        StudyError: an item without ``=``, or a key the study sets itself (the message names the option to use).
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        out = dict(items)
    else:
        out = {}
        for item in items:
            if "=" not in str(item):
                raise StudyError(f"--set {item!r}: expected KEY=VALUE, e.g. --set patience=3")
            key, value = str(item).split("=", 1)
            key = key.strip()
            if not key:
                raise StudyError(f"--set {item!r}: empty key")
            out[key] = _parse_value(value.strip())
    for key in out:
        if key in CONTROLLED:
            hint = f"; use {CONTROLLED[key]}" if CONTROLLED[key] else ""
            raise StudyError(f"--set {key}=...: the study sets '{key}' itself for every run{hint}")
    return out


def _unique(values, what: str, cast) -> list:
    out = []
    for v in values:
        try:
            c = cast(v)
        except (TypeError, ValueError):
            raise StudyError(f"{what}: {v!r} is not a valid value") from None
        if c not in out:
            out.append(c)
    if not out:
        raise StudyError(f"{what}: give at least one value")
    return out


def _positive(value, what: str, cast=float):
    kind = "integer" if cast is int else "number"
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (v > 0 and math.isfinite(v)) or (cast is int and v != int(v)):
        raise StudyError(f"{what} must be a positive {kind}, got {value!r}")
    return cast(v)


def _normalise_inits(inits) -> dict[str, str | None]:
    pairs = list(inits.items()) if isinstance(inits, Mapping) else [parse_init(t) for t in (inits or [])]
    if not pairs:
        raise StudyError("no --init given: give 'random' and/or NAME=PATH of pretrained backbones")
    out: dict[str, str | None] = {}
    for name, path in pairs:
        if name in out:
            raise StudyError(f"--init: the name {name!r} is given twice")
        if name != RANDOM and path in (None, "", RANDOM):
            raise StudyError(f"--init {name}: no file given")
        out[name] = None if name == RANDOM else str(Path(path).expanduser().resolve())
    return out


def _check_inits(inits: dict[str, str | None], backbone: str) -> dict[str, dict]:
    """Load every init file into a fresh ``backbone``; return ``{name: {"path", "sha256", "method"}}``."""
    from monai_cxrssl.networks import build_backbone, init_backbone

    try:
        build_backbone(backbone)
    except Exception as e:
        raise StudyError(f"--backbone {backbone!r} cannot be built: {e}") from None
    checked = {}
    for name, path in inits.items():
        if path is None:
            checked[name] = {"path": None, "sha256": None}
            continue
        if not Path(path).is_file():
            raise StudyError(f"init '{name}': the file '{path}' does not exist")
        try:
            report = init_backbone(build_backbone(backbone), path)
        except Exception as e:  # CheckpointError and anything a foreign file may raise
            raise StudyError(f"init '{name}': the file '{path}' cannot initialise the backbone {backbone!r}: {e}") from None
        checked[name] = {"path": path, "sha256": report["sha256"], "method": report.get("method"),
                         "format": report.get("format")}
        _say(f"init {name}: {path} loads into {backbone} ({report.get('format')}, method {report.get('method')})")
    return checked


def _test_signature(data) -> dict:
    items = data.test_items
    return {"images": [str(e["image"]) for e in items], "patients": [str(e.get("patient_id", "")) for e in items]}


def _check_data(source: dict, fractions, seeds, data_options: dict, validated: bool = True) -> dict:
    """Build :class:`ClassificationData` for every (fraction, seed); return a description of the test set."""
    from monai_cxrssl.data import ClassificationData

    reference = None
    description = {}
    for f in fractions:
        for s in seeds:
            try:
                options = data_options if validated else {**data_options, "val_fraction": 0.0}
                data = ClassificationData(dataset_dir=source["dataset_dir"] or None, datalist=source["datalist"] or None,
                                          demo_dir=source["demo_dir"], label_fraction=f, seed=s, **options)
            except (CXRSSLError, ValueError, OSError) as e:
                raise StudyError(f"the data cannot be drawn at label fraction {f} with seed {s}: {e}") from None
            signature = _test_signature(data)
            if reference is None:
                if not signature["images"]:
                    raise StudyError(f"'{data.source}' has no test list: the study evaluates every run on it; "
                                     "split the datalist first (python -m monai_cxrssl split ... --test 0.2)")
                y = data.targets("test")
                usable = [k for k in range(y.shape[1])
                          if ((y[:, k] == 1).any() and (y[:, k] == 0).any())]
                if not usable:
                    raise StudyError(f"the test list of '{data.source}' has no output with both a positive and a "
                                     "negative example: its AUC is undefined")
                reference = signature
                description = {"source": data.source, "task": data.task, "classes": list(data.classes),
                               "n_test": len(signature["images"]), "n_val": len(data.val_items)}
            elif signature != reference:
                raise StudyError(f"the test list changes with label fraction {f} / seed {s}; it must be fixed")
            description.setdefault("n_train", {})[f"f{float(f)}-s{s}"] = len(data.train_items)
            description.setdefault("n_labels", {})[f"f{float(f)}-s{s}"] = data.n_labels
    return description


def _settings_diff(found: Mapping, expected: Mapping) -> dict:
    keys = sorted(set(found) | set(expected))
    return {k: (found.get(k), expected.get(k)) for k in keys if found.get(k) != expected.get(k)}
