"""One wiring for every pretraining bundle: ``bundles/_shared_ssl/`` plus each method's ``configs/method.json``.

The pretraining bundles share everything but the method: data, preprocessing and cache, optimiser and
learning-rate schedule, checkpointing and resumption, logging, multi-process training, the inference
(embeddings) config. That shared wiring is written once, in ``bundles/_shared_ssl/``:

- ``train.json``: every key a pretraining run needs except the method's own;
- ``multi_gpu_train.json``: the ``torchrun`` overlay (identical for every method);
- ``image_store.json``: the overlay that trains from a persistent image store
  (:class:`~monai_cxrssl.data.CXRStoreDataset`) instead of the in-memory cache (identical for every method);
- ``inference.json``: the encoder's embeddings of a folder or datalist.

A bundle's ``configs/method.json`` holds only what is specific to its method: its settings
(``learning_rate``, ``temperature``, ``queue_size``...), ``network_def``, its views, what its
checkpoint records to refuse a resume with other settings (``train#checkpoint_metadata``), and any
other key of the shared train.json it changes. This module writes each bundle's own
``configs/train.json``, ``multi_gpu_train.json``, ``inference.json`` and ``image_store.json`` from the two, so that every
bundle folder stays self-contained (the MONAI model zoo takes a bundle folder as it is, and the main
command is ``python -m monai.bundle run --config_file bundles/simclr_cxr/configs/train.json``)::

    python -m monai_cxrssl.bundle_sync            # write the generated configs
    python -m monai_cxrssl.bundle_sync --check    # exit 1 naming every generated file that differs

The test suite runs the check, so a hand edit of a generated file, or of the shared wiring without
regenerating, fails there. Adding a method: its module in ``monai_cxrssl/methods/``, a bundle folder
with ``configs/method.json`` (plus ``metadata.json``, ``docs/``), then this command.

Merging: dictionaries merge key by key (recursively); any other value of ``method.json``, lists included,
replaces the shared one. Keys new to the shared file's top level go just before its ``network_def`` or
``network`` (among the settings; ``bundle_root`` right after ``imports``), elsewhere at the end of their
dictionary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from monai_cxrssl.paths import REPO_ROOT

__all__ = ["SHARED_DIR", "METHOD_FILE", "merge", "generated_configs", "sync"]

SHARED_DIR = REPO_ROOT / "bundles" / "_shared_ssl"
METHOD_FILE = "method.json"
GENERATED = ("train.json", "multi_gpu_train.json", "inference.json", "image_store.json")


#: new top-level keys go just before the first of these in the shared file (among the settings)
_SETTINGS_END = ("network_def", "network")


def merge(shared: dict, specific: dict, top: bool = True) -> dict:
    """``shared`` with ``specific`` merged in (see the module docstring); neither is modified."""
    out: dict[str, Any] = {}
    new = [k for k in specific if k not in shared]
    for key, value in shared.items():
        if top and key in _SETTINGS_END:
            out.update({k: specific[k] for k in new})
            new = []
        if key in specific:
            other = specific[key]
            value = merge(value, other, top=False) if isinstance(value, dict) and isinstance(other, dict) else other
        out[key] = value
        if top and key == "imports" and "bundle_root" in new:  # the bundle's root right after the imports
            out["bundle_root"] = specific["bundle_root"]
            new.remove("bundle_root")
    out.update({k: specific[k] for k in new})
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"'{path}': cannot be read as JSON ({e})") from None


def pretraining_bundles(bundles_dir: Path = REPO_ROOT / "bundles") -> list[Path]:
    """The bundle folders with a ``configs/method.json``, by name."""
    return sorted(p for p in bundles_dir.iterdir() if (p / "configs" / METHOD_FILE).is_file())


def generated_configs(bundle: Path, shared_dir: Path = SHARED_DIR) -> dict[str, str]:
    """``{file name: text}`` of the configs generated for ``bundle`` (a folder under ``bundles/``)."""
    specific = _read(bundle / "configs" / METHOD_FILE)
    if "network_def" not in specific:
        raise ValueError(f"'{bundle / 'configs' / METHOD_FILE}': no network_def (the method this bundle trains)")
    root = {"bundle_root": f"$monai_cxrssl.paths.bundle_root('{bundle.name}')"}
    train = merge(_read(shared_dir / "train.json"), {**root, **specific})
    inference = merge(_read(shared_dir / "inference.json"), {**root, "backbone": train["backbone"]})
    configs = {"train.json": train, "multi_gpu_train.json": _read(shared_dir / "multi_gpu_train.json"),
               "inference.json": inference, "image_store.json": _read(shared_dir / "image_store.json")}
    return {name: json.dumps(c, indent=4) + "\n" for name, c in configs.items()}


def sync(check: bool = False, bundles_dir: Path = REPO_ROOT / "bundles", shared_dir: Path = SHARED_DIR) -> list[Path]:
    """Write (or, with ``check``, only compare) every pretraining bundle's generated configs; returns the files
    that differed from what is generated."""
    stale = []
    for bundle in pretraining_bundles(bundles_dir):
        for name, text in generated_configs(bundle, shared_dir).items():
            path = bundle / "configs" / name
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
                if not check:
                    path.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_cxrssl.bundle_sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 naming the files that differ")
    args = parser.parse_args(argv)
    stale = sync(check=args.check)
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path.relative_to(REPO_ROOT)}")
    if args.check and stale:
        print("generated from bundles/_shared_ssl/ and configs/method.json: edit those, then run "
              "python -m monai_cxrssl.bundle_sync", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
