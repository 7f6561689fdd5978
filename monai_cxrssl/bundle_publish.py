"""Publishing a trained bundle: ``large_files.yml``, the model zoo's list of the weights a bundle downloads.

The MONAI model zoo keeps weights out of its repository. A bundle folder's ``large_files.yml`` lists each file
its configs read from ``models/`` (the ``ckpt_dir``) with the URL it is downloaded from and its hash; MONAI's
``python -m monai.bundle download_large_files --bundle_path BUNDLE`` and the zoo's ``ci/verify_bundle.py``
fetch every file, check its hash and put it in place before anything runs.

After training, upload the bundle's ``models/`` folder under one URL prefix, then write the list::

    python -m monai_cxrssl large-files bundles/simclr_cxr --url-prefix https://example.org/simclr_cxr/0.5.0/models

Every file of ``models/`` is listed, ``models/NAME`` at ``URL_PREFIX/NAME`` with its SHA-256: the pretraining
bundles' ``model.pt`` (the encoder's state dict, for ``network_def``) and ``backbone.pt`` (the same weights
with their spec, read by ``inference.json``); the classifier's ``model.pt`` and ``model_info.json`` (what its
``network_def`` is built from). The file is YAML as the zoo writes it; reading it (MONAI's tools) needs PyYAML.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

from monai_cxrssl.checkpoints import file_sha256
from monai_cxrssl.exceptions import CXRSSLError
from monai_cxrssl.utils import atomic_write

__all__ = ["LARGE_FILES", "large_files", "write_large_files"]

LARGE_FILES = "large_files.yml"
#: URL schemes MONAI's ``download_url`` reads (``file`` for a local mirror or a test)
SCHEMES = ("https", "http", "file")


def large_files(bundle_dir: str | os.PathLike, url_prefix: str, ckpt_dir: str = "models") -> list[dict]:
    """One entry per file of ``bundle_dir/ckpt_dir`` (sorted by name; hidden files, e.g. an interrupted write's
    temporary, left out): ``path`` relative to the bundle, ``url``, ``hash_val`` (SHA-256) and ``hash_type``."""
    bundle_dir = Path(bundle_dir)
    scheme = urlparse(url_prefix).scheme
    if scheme not in SCHEMES or not urlparse(url_prefix).path.strip("/"):
        raise CXRSSLError(f"--url-prefix '{url_prefix}': expected the URL the files of {ckpt_dir}/ are uploaded "
                          f"under, starting with {', '.join(s + '://' for s in SCHEMES)}")
    folder = bundle_dir / ckpt_dir
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
    if not files:
        raise CXRSSLError(f"'{folder}' holds no weights to publish: train the bundle first (its ckpt_dir, "
                          f"'{ckpt_dir}/', is where training writes model.pt)")
    prefix = url_prefix.rstrip("/")
    return [{"path": f"{ckpt_dir}/{p.name}", "url": f"{prefix}/{p.name}", "hash_val": file_sha256(p),
             "hash_type": "sha256"} for p in files]


def write_large_files(bundle_dir: str | os.PathLike, url_prefix: str, ckpt_dir: str = "models") -> list[dict]:
    """Write ``bundle_dir/large_files.yml`` (atomically) and return its entries (:func:`large_files`)."""
    entries = large_files(bundle_dir, url_prefix, ckpt_dir)
    lines = ["# the weights of this bundle: python -m monai.bundle download_large_files --bundle_path <this folder>",
             "large_files:"]
    for entry in entries:  # JSON strings are YAML double-quoted scalars
        first, *rest = (f"{k}: {json.dumps(v)}" for k, v in entry.items())
        lines += [f"  - {first}", *(f"    {line}" for line in rest)]
    path = Path(bundle_dir) / LARGE_FILES
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return entries
