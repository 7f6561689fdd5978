"""Where things are: the shared real-data folder and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "shared_data_dir", "bundle_root"]

#: The repository root when the package is used from a source checkout (editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The folder of real radiographs used by tests and benchmarks.

    ``$CXRSSL_SHARED_DATA`` when set, else ``../shared/data`` seen from the repository root.
    The folder may not exist; callers decide whether that is an error.
    """
    env = os.environ.get("CXRSSL_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / ".." / "shared" / "data").resolve()


#: what a run with the default ``output_dir`` writes into a bundle's folder (``outputs`` from before 0.5.0);
#: ignored by git, and by anything that copies a bundle
RUN_OUTPUTS = ("outputs", "models", "checkpoint.pt", "tensorboard", "demo_data", "demo_data_shift", "embeddings",
               "eval", "eval_shift", "inference")


def bundle_root(name: str) -> str:
    """A bundle's folder as its config's ``bundle_root`` (the default ``output_dir``, so that the weights land in
    its ``models/``, the zoo's ``ckpt_dir``): ``"."`` when the command runs
    from inside that folder (the MONAI model zoo's way: a folder named ``name`` with ``configs/metadata.json``),
    else ``bundles/<name>`` (from the repository root, as every command in the docs). ``--bundle_root``
    overrides it."""
    here = Path.cwd()
    if here.name == name and (here / "configs" / "metadata.json").is_file():
        return "."
    return f"bundles/{name}"
