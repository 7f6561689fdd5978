"""Where training and inference data come from: a datalist, a dataset folder, or the SYNTHETIC demo.

``training_items`` decides what to train on: a datalist JSON, a dataset folder (layout detected by
:func:`~monai_cxrssl.data.datalist.build_datalist`), or, when neither is given, the embedded SYNTHETIC demo
phantoms (written by rank 0 while the other processes wait). Entries are checked up front (keys, files).
``inference_items`` does the same for the images to predict on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_cxrssl.data.datalist import build_datalist, check_datalist, datalist_from_image_folder, load_datalist
from monai_cxrssl.data.phantoms import demo_datalist_path, write_demo_dataset
from monai_cxrssl.distributed import get_rank, get_world_size
from monai_cxrssl.exceptions import DatalistError

__all__ = ["resolve_datalist", "training_items", "inference_items"]

logger = logging.getLogger(__name__)


def resolve_datalist(dataset_dir: str | os.PathLike | None = None, datalist: str | os.PathLike | None = None,
                     demo_dir: str | os.PathLike | None = None, demo_seed: int = 0) -> tuple[dict, str]:
    """The whole datalist of a data source, and a description of the source.

    Args:
        dataset_dir: a dataset folder (class folders, ``labels.csv``, DICOM files or a ``datalist.json``).
        datalist: a MONAI datalist JSON; takes precedence over ``dataset_dir``.
        demo_dir: where to write the SYNTHETIC demo set when neither source is given (logged as such).
        demo_seed: seed of that demo set (another seed gives other synthetic patients).
    """
    if datalist:
        loaded = load_datalist(datalist, keys=None)
        if loaded.get("synthetic") is True:  # e.g. the demo set's own datalist, passed by path
            logger.warning("datalist %s holds SYNTHETIC chest X-ray phantoms (its 'synthetic' field): results on "
                           "them mean nothing clinically", datalist)
        return loaded, str(datalist)
    if dataset_dir:
        return build_datalist(dataset_dir), str(dataset_dir)
    if demo_dir is None:
        raise DatalistError("no data given: set dataset_dir or datalist (or demo_dir for the synthetic demo)")
    logger.warning(
        "No dataset_dir or datalist given: using SYNTHETIC chest X-ray phantoms written to %s. "
        "They exist so the bundle runs on a fresh machine; results on them mean nothing clinically. "
        "Pass --dataset_dir or --datalist for real data.", demo_dir)
    if get_rank() == 0:
        write_demo_dataset(demo_dir, seed=demo_seed)
    if get_world_size() > 1:  # the other processes read it once rank 0 has written it
        torch.distributed.barrier()
    return load_datalist(demo_datalist_path(demo_dir), keys=None), f"{demo_dir} (synthetic demo)"


def training_items(dataset_dir: str | os.PathLike | None = None, datalist: str | os.PathLike | None = None,
                   demo_dir: str | os.PathLike | None = None, split: str = "training",
                   required_keys: Sequence[str] = ("image",)) -> list[dict]:
    """The checked list of entries to train on (see :func:`resolve_datalist` for the sources).

    Args:
        split: which list of the datalist (``training`` for pretraining: never the test set).
        required_keys: keys every entry must have.

    Raises:
        DatalistError: empty list, missing keys or files, unknown split.
    """
    dl, source = resolve_datalist(dataset_dir, datalist, demo_dir)
    if split not in dl:
        raise DatalistError(f"datalist from '{source}' has no '{split}' list; it has {sorted(k for k in dl if isinstance(dl[k], list))}")
    return check_datalist(dl[split], required_keys=required_keys, check_files=True, source=f"{source}:{split}")


def inference_items(source: str | os.PathLike, split: str = "test",
                    demo_dir: str | os.PathLike | None = None) -> list[dict]:
    """Entries to predict on: every radiograph below a folder, or one list of a datalist JSON.

    Args:
        source: a folder (PNG/JPEG/NIfTI/DICOM files, searched recursively) or a datalist JSON.
        split: the datalist's list to use (``training``, ``validation``, ``test``), or ``all``.
        demo_dir: without ``source``, the SYNTHETIC demo set there (written if missing; logged as
            such) is used, so that the bundle's defaults run after a demo training run.
    """
    if not source:
        if demo_dir is None:
            raise DatalistError("no input given: set input to a folder of radiographs or a datalist JSON")
        resolve_datalist(None, None, demo_dir)  # writes the demo set if missing, and says it is synthetic
        logger.warning("no input given: predicting on the SYNTHETIC demo set's '%s' list in %s (pass --input "
                       "with a folder of radiographs or a datalist JSON for real images)", split, demo_dir)
        source = demo_datalist_path(demo_dir)
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        dl = load_datalist(path, keys=None)
        lists = [k for k in ("training", "validation", "test") if isinstance(dl.get(k), list)]
        if split != "all" and split not in lists:
            raise DatalistError(f"datalist '{path}' has no '{split}' list; it has {lists} (or use split 'all')")
        items = [e for k in (lists if split == "all" else [split]) for e in dl[k]]
    elif path.is_dir():
        items = datalist_from_image_folder(path)["training"]
    else:
        raise DatalistError(f"input '{path}' is neither a folder nor a datalist .json file")
    items = check_datalist(items, required_keys=("image",), check_files=True, source=str(path))
    return [{"patient_id": "", **e} for e in items]
