"""Datalists: build, load, write and check MONAI-style JSON datalists of chest radiographs.

A datalist is a dict in the format of :func:`monai.data.load_decathlon_datalist`, extended with
classification metadata:

.. code-block:: python

    {
        "description": "class folders under /data/kermany",
        "task": "binary",                      # "binary" | "multiclass" | "multilabel" | "unlabeled"
        "classes": ["NORMAL", "PNEUMONIA"],    # class names, or finding names for "multilabel"
        "training": [
            {"image": "train/NORMAL/IM-0115-0001.jpeg", "label": 0, "patient_id": "train/IM-0115"},
            ...
        ],
        "validation": [...],
        "test": [...],
    }

Each entry has ``image`` (a path, or a list of paths), ``patient_id`` (str) and, depending on
``task``, ``label`` (int index into ``classes``; single-label tasks) or ``labels`` (list of 0/1,
one per finding in ``classes``; multi-label task). DICOM entries may carry ``study_id``.

Paths: the builders return absolute paths. :func:`write_datalist` writes them relative to the
folder of the JSON file, and :func:`load_datalist` resolves relative paths against that folder
(or an explicit ``base_dir``), as :func:`monai.data.load_decathlon_datalist` does, so a dataset
folder with its ``datalist.json`` can be moved as a whole.

Every problem with the input (empty folder, missing CSV column, missing file, malformed JSON...)
raises :class:`~monai_cxrssl.exceptions.DatalistError` naming the file, entry and key at fault.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_cxrssl.exceptions import CXRReadError, DatalistError
from monai_cxrssl.utils import atomic_write

__all__ = [
    "SPLIT_KEYS",
    "TASKS",
    "LABELLED_TASKS",
    "DEFAULT_SPLIT_NAMES",
    "IMAGE_EXTENSIONS",
    "kermany_patient_id",
    "datalist_from_class_folders",
    "datalist_from_csv",
    "datalist_from_dicom_folder",
    "build_datalist",
    "load_datalist",
    "write_datalist",
    "check_datalist",
    "split_keys",
]

logger = logging.getLogger(__name__)

#: The datalist keys holding lists of entries, in their canonical order.
SPLIT_KEYS: tuple[str, ...] = ("training", "validation", "test")

#: The tasks a classifier trains on (``monai_cxrssl.data.targets.TASKS``).
LABELLED_TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel")
#: Values of the top-level ``task`` field: a labelled task, or none.
TASKS: tuple[str, ...] = (*LABELLED_TASKS, "unlabeled")

#: Folder names / CSV split values (compared case-insensitively) -> datalist key.
DEFAULT_SPLIT_NAMES: Mapping[str, str] = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}

#: File name endings taken as images by the folder builders (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")

#: Endings never taken as DICOM when probing files without ``.dcm`` ending or ``DICM`` magic.
_NOT_DICOM_EXTENSIONS = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".json", ".csv", ".txt", ".md", ".npz", ".npy")

_DATALIST_FILE = "datalist.json"
_LABELS_CSV = "labels.csv"
_MAX_SHOWN = 5  # how many offending entries an error message lists

_KERMANY_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+"),  # person1000_bacteria_2931, person447_virus_921_1
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+"),  # IM-0115-0001, NORMAL2-IM-0173-0001-0002
)


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(("" if e.startswith(".") else ".") + e.lower() for e in extensions)


def _has_extension(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(extensions)


def _visible_children(folder: Path) -> list[Path]:
    """Sorted children of ``folder``, without hidden entries (``.DS_Store``, ``._x.jpeg``...)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files anywhere below ``folder``, sorted, hidden files and folders skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and _has_extension(p, extensions)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatalistError(f"{what} '{root}' does not exist")
    if not root.is_dir():
        raise DatalistError(f"{what} '{root}' is not a folder")
    return root.resolve()


def _task_for(n_classes: int) -> str:
    return "binary" if n_classes == 2 else "multiclass"


def _make_datalist(description: str, task: str, classes: Sequence[str], splits: Mapping[str, list]) -> dict:
    """A datalist dict with the metadata first and every key of :data:`SPLIT_KEYS` present."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    out: dict[str, Any] = {"description": description, "task": task, "classes": list(classes)}
    for key in SPLIT_KEYS:
        out[key] = list(splits.get(key, []))
    return out


def _short(entry: Any, limit: int = 200) -> str:
    text = repr(entry)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def split_keys(datalist: Mapping[str, Any]) -> list[str]:
    """The keys of ``datalist`` that hold lists of entries (dicts), canonical keys first.

    ``classes`` (a list of names) and other metadata are not split keys.
    """
    keys = [
        k
        for k, v in datalist.items()
        if k != "classes" and isinstance(v, list) and all(isinstance(e, dict) for e in v)
    ]
    return sorted(keys, key=lambda k: (SPLIT_KEYS.index(k) if k in SPLIT_KEYS else len(SPLIT_KEYS), k))


def require_split_keys(datalist: Any, what: str) -> list[str]:
    """:func:`split_keys` of ``datalist``, or :class:`DatalistError` (naming ``what``) when it is not a
    dict or holds no list of entries."""
    if not isinstance(datalist, Mapping):
        raise DatalistError(f"{what}: a datalist must be a dict, got {type(datalist).__name__}")
    keys = split_keys(datalist)
    if not keys:
        raise DatalistError(f"{what}: the datalist has no list of entries (expected keys {SPLIT_KEYS})")
    return keys


# ----------------------------------------------------------------------------------------------
# checking
# ----------------------------------------------------------------------------------------------


def _image_paths(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_datalist(
    items: Sequence[Mapping[str, Any]],
    *,
    required_keys: Sequence[str] = ("image",),
    check_files: bool = True,
    source: str = "datalist",
) -> Sequence[Mapping[str, Any]]:
    """Check a list of datalist entries before a (long) run, and return it unchanged.

    Args:
        items: the entries, e.g. ``datalist["training"]``.
        required_keys: keys every entry must have.
        check_files: also check that every ``image`` path (or each path of a list) exists.
        source: how messages name the list, e.g. ``"datalist.json 'training'"``.

    Raises:
        DatalistError: ``items`` is not a list or is empty; an entry is not a dict or misses a
            required key (the message names the index and key and shows the entry); image files
            do not exist (the message names index and path; when many are missing, it gives their
            count and the first few).
    """
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise DatalistError(f"{source} must be a list of entries (dicts), got {type(items).__name__}")
    if len(items) == 0:
        raise DatalistError(f"{source} is empty: expected at least one entry")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DatalistError(f"{source}: entry {i} is a {type(item).__name__}, expected a dict: {_short(item)}")
        for key in required_keys:
            if key not in item:
                raise DatalistError(
                    f"{source}: entry {i} has no '{key}' key (required: {list(required_keys)}); entry: {_short(item)}"
                )
        if "image" in item:
            for p in _image_paths(item["image"]):
                if not isinstance(p, (str, os.PathLike)) or not str(p):
                    raise DatalistError(f"{source}: entry {i} has an invalid 'image' {p!r}, expected a file path")
    if check_files:
        missing = [
            (i, str(p))
            for i, item in enumerate(items)
            if "image" in item
            for p in _image_paths(item["image"])
            if not os.path.isfile(p)
        ]
        if len(missing) == 1:
            i, p = missing[0]
            raise DatalistError(f"{source}: entry {i}: image file '{p}' does not exist")
        if missing:
            shown = "; ".join(f"entry {i}: '{p}'" for i, p in missing[:_MAX_SHOWN])
            more = f"; ... and {len(missing) - _MAX_SHOWN} more" if len(missing) > _MAX_SHOWN else ""
            raise DatalistError(
                f"{source}: {len(missing)} of {len(items)} entries point at image files that do not exist: "
                f"{shown}{more}"
            )
    return items


# ----------------------------------------------------------------------------------------------
# class folders
# ----------------------------------------------------------------------------------------------


def kermany_patient_id(path: str | os.PathLike) -> str:
    """Patient id from a Kermany et al. (2018) chest X-ray file name, unique within one folder.

    ``person1000_bacteria_2931.jpeg`` and ``person1000_virus_1681.jpeg`` -> ``"person1000"``;
    ``IM-0115-0001.jpeg`` and ``IM-0011-0001-0002.jpeg`` -> ``"IM-0115"``, ``"IM-0011"``;
    ``NORMAL2-IM-0173-0001-0001.jpeg`` -> ``"NORMAL2-IM-0173"`` (``IM-`` and ``NORMAL2-IM-`` are
    different numbering schemes, hence different patients).

    Kermany patient numbers are only unique within one split folder:
    :func:`datalist_from_class_folders` prefixes the split folder (``"train/person1000"``).

    Any other name falls back to the file stem, i.e. each such image is its own patient
    (no grouping, so a patient-level split degenerates to an image-level split for these files).
    """
    stem = _stem(path)
    for pattern in _KERMANY_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def datalist_from_class_folders(
    root: str | os.PathLike,
    *,
    split_names: Mapping[str, str] = DEFAULT_SPLIT_NAMES,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    patient_id_fn: Callable[[Path], str] = kermany_patient_id,
) -> dict:
    """Datalist of a class-per-folder tree.

    Two layouts are understood:

    - ``root/<split>/<class>/<images>``, where ``<split>`` is a key of ``split_names``
      (case-insensitive; by default train, val, valid, test...), mapped to the datalist key;
    - ``root/<class>/<images>``: all entries go to ``"training"``.

    Images may sit in sub-folders of a class folder. Class names are sorted alphabetically over
    all splits and their index is the ``label`` (the same in every split); ``classes`` records them.

    Args:
        root: the top folder.
        split_names: folder name (lower case) -> datalist key (``training``/``validation``/``test``).
        extensions: file name endings taken as images (case-insensitive).
        patient_id_fn: file path -> patient id within its folder, for files that are not DICOM. In the split
            layout the id is prefixed with the split folder name (``"train/person1000"``), because public
            datasets (Kermany) number patients per split folder. DICOM files take the ``PatientID`` of their
            header instead (not prefixed: a patient in two split folders is then seen as one, and a leakage
            check finds it), and their ``StudyInstanceUID`` as ``study_id``.

    Returns:
        the datalist dict (absolute image paths), ``task`` ``"binary"`` for two classes else
        ``"multiclass"``.

    Raises:
        DatalistError: ``root`` is missing, has no class folders, mixes split and non-split
            folders, or holds no image files.
    """
    root = _require_dir(root, "dataset folder")
    exts = _normalize_extensions(extensions)
    split_names = {k.lower(): v for k, v in split_names.items()}
    bad_keys = sorted({v for v in split_names.values()} - set(SPLIT_KEYS))
    if bad_keys:
        raise ValueError(f"split_names values must be among {SPLIT_KEYS}, got {bad_keys}")
    folders = [p for p in _visible_children(root) if p.is_dir()]
    split_folders = [p for p in folders if p.name.lower() in split_names]
    layout = (
        "root/<split>/<class>/<images> with <split> in "
        + ", ".join(sorted(split_names))
        + " or root/<class>/<images>"
    )
    if split_folders:
        others = [p.name for p in folders if p not in split_folders]
        if others:
            raise DatalistError(
                f"'{root}' mixes split folders {[p.name for p in split_folders]} with other folders {others}; "
                f"expected {layout}"
            )
        groups = [(p.name, split_names[p.name.lower()], p) for p in split_folders]
    else:
        groups = [(None, "training", root)]

    # (split folder name, datalist key, class name, class folder)
    class_dirs = [
        (name, key, c.name, c) for name, key, folder in groups for c in _visible_children(folder) if c.is_dir()
    ]
    for _, _, folder in groups:
        loose = [p.name for p in _visible_children(folder) if p.is_file() and _has_extension(p, exts)]
        if loose:
            logger.warning("ignoring %d image files directly in '%s' (not in a class folder)", len(loose), folder)
    if not class_dirs:
        raise DatalistError(f"no class folders found in '{root}'; expected {layout}")
    classes = sorted({c for _, _, c, _ in class_dirs})
    index = {c: i for i, c in enumerate(classes)}

    splits: dict[str, list] = {k: [] for k in SPLIT_KEYS}
    for split_name, key, class_name, folder in class_dirs:
        files = _image_files(folder, exts)
        if not files:
            logger.warning("class folder '%s' holds no image files with endings %s", folder, exts)
        for f in files:
            ds = _read_dicom_header(f) if _looks_like_dicom(f) else None
            if ds is not None:  # a DICOM file names its patient (PatientID), the same in every split folder
                splits[key].append({**_dicom_entry(f, ds), "label": index[class_name]})
                continue
            pid = str(patient_id_fn(f))
            if split_name:
                pid = f"{split_name}/{pid}"
            splits[key].append({"image": str(f), "label": index[class_name], "patient_id": pid})
    if not any(splits.values()):
        raise DatalistError(
            f"class folders {classes} under '{root}' hold no image files with endings {list(exts)}; expected {layout}"
        )
    return _make_datalist(f"class folders under {root}", _task_for(len(classes)), classes, splits)


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------


def _sorted_names(values: Iterable[str]) -> list[str]:
    """Sorted, numerically when every value is an integer (``"2" < "10"``)."""
    values = set(values)
    if all(re.fullmatch(r"[+-]?\d+", v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def datalist_from_csv(
    csv_path: str | os.PathLike,
    *,
    image_col: str = "image",
    label_col: str | None = None,
    labels_col: str | None = None,
    labels_sep: str = "|",
    patient_col: str | None = None,
    split_col: str | None = None,
    split_map: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
    no_finding: str | None = "No Finding",
    base_dir: str | os.PathLike | None = None,
    study_col: str | None = None,
    check_files: bool = True,
) -> dict:
    """Datalist from a CSV table with one row per image.

    Args:
        csv_path: the CSV file (UTF-8, header row, comma-separated).
        image_col: column of image paths, absolute or relative to ``base_dir``.
        label_col: single-label column: its values (strings) are class names, mapped to their
            index in ``classes``. Gives task ``"binary"`` (2 classes) or ``"multiclass"``.
        labels_col: multi-label column: ``labels_sep``-separated finding names, turned into a 0/1
            vector over ``classes`` (task ``"multilabel"``). The ``no_finding`` token means an
            all-zero vector. An empty cell is an error (write the ``no_finding`` token instead).
        labels_sep: separator of findings in ``labels_col``.
        patient_col: column of patient ids (stored as str). Rows with an empty cell get no
            ``patient_id`` (a warning is logged; splits treat each such image as its own patient).
        split_col: column giving the split of each row, mapped with ``split_map``. Without it all
            rows go to ``"training"``.
        split_map: split value (case-insensitive) -> datalist key; default
            :data:`DEFAULT_SPLIT_NAMES` (train/training, val/valid/validation, test/testing).
        classes: class or finding names in index order. Default: sorted distinct values of
            ``label_col`` (numerically if all are integers), or the sorted union of findings in
            ``labels_col`` without the ``no_finding`` token. With explicit classes, any other
            value is an error naming the row.
        no_finding: the token of ``labels_col`` meaning "no finding" (``None``: no such token).
        base_dir: folder that relative image paths are relative to; default the CSV's folder.
        study_col: optional column of study ids, stored as ``study_id``.
        check_files: check that every image file exists (see :func:`check_datalist`; entry ``i``
            there is data row ``i``, line ``i + 2`` for a CSV without line breaks inside cells).

    With neither ``label_col`` nor ``labels_col`` the datalist is ``"unlabeled"`` (for
    self-supervised pretraining); giving both is an error.

    Raises:
        DatalistError: the CSV is missing or has no rows; a named column is not in the header
            (the message lists the columns present); a row has an empty image, label or split
            cell, an unknown class/finding or split value (the message names the line).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatalistError(f"CSV file '{csv_path}' does not exist")
    if label_col and labels_col:
        raise DatalistError(
            f"{csv_path}: give either label_col (single-label) or labels_col (multi-label), not both "
            f"({label_col!r}, {labels_col!r})"
        )
    base = Path(base_dir) if base_dir is not None else csv_path.parent
    base = base.resolve()
    split_map = {k.lower(): v for k, v in (DEFAULT_SPLIT_NAMES if split_map is None else split_map).items()}

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise DatalistError(f"CSV file '{csv_path}' is empty: expected a header row with a '{image_col}' column")
        wanted = {
            "image_col": image_col,
            "label_col": label_col,
            "labels_col": labels_col,
            "patient_col": patient_col,
            "split_col": split_col,
            "study_col": study_col,
        }
        for arg, col in wanted.items():
            if col is not None and col not in header:
                raise DatalistError(
                    f"{csv_path}: column '{col}' (given as {arg}) not found; columns present: {', '.join(header)}"
                )
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise DatalistError(f"CSV file '{csv_path}' has a header but no rows")

    def cell(line: int, row: dict, col: str, what: str) -> str:
        value = (row.get(col) or "").strip()
        if not value:
            raise DatalistError(f"{csv_path}, line {line}: empty '{col}' cell, expected {what}")
        return value

    def findings(line: int, row: dict) -> list[str]:
        tokens = [t.strip() for t in cell(line, row, labels_col, "findings or " + repr(no_finding)).split(labels_sep)]
        return [t for t in tokens if t and t != no_finding]

    # class names
    if label_col:
        present = [cell(line, row, label_col, "a class name") for line, row in rows]
        names = list(classes) if classes is not None else _sorted_names(present)
        task = _task_for(len(names))
    elif labels_col:
        row_findings = [findings(line, row) for line, row in rows]
        names = list(classes) if classes is not None else sorted({t for found in row_findings for t in found})
        task = "multilabel"
    else:
        names, task = list(classes or []), "unlabeled"
    index = {c: i for i, c in enumerate(names)}
    if len(index) != len(names):
        raise DatalistError(f"{csv_path}: classes contain duplicates: {names}")

    def class_index(line: int, name: str) -> int:
        if name not in index:
            raise DatalistError(f"{csv_path}, line {line}: '{name}' is not among the classes {names}")
        return index[name]

    splits: dict[str, list] = {k: [] for k in SPLIT_KEYS}
    ordered: list[dict] = []  # entries in row order, for check_datalist
    n_no_patient = 0
    for r, (line, row) in enumerate(rows):
        image = cell(line, row, image_col, "an image path")
        entry: dict[str, Any] = {"image": os.path.normpath(os.path.join(base, image))}
        if label_col:
            entry["label"] = class_index(line, row[label_col].strip())
        elif labels_col:
            vector = [0] * len(names)
            for name in row_findings[r]:
                vector[class_index(line, name)] = 1
            entry["labels"] = vector
        if patient_col:
            pid = (row.get(patient_col) or "").strip()
            if pid:
                entry["patient_id"] = pid
            else:
                n_no_patient += 1
        if study_col and (row.get(study_col) or "").strip():
            entry["study_id"] = row[study_col].strip()
        key = "training"
        if split_col:
            value = cell(line, row, split_col, f"one of {sorted(split_map)}")
            if value.lower() not in split_map:
                raise DatalistError(
                    f"{csv_path}, line {line}: split '{value}' in column '{split_col}' is not one of "
                    f"{sorted(split_map)}"
                )
            key = split_map[value.lower()]
        splits[key].append(entry)
        ordered.append(entry)
    if n_no_patient:
        logger.warning("%s: %d rows have an empty '%s' cell and get no patient_id", csv_path, n_no_patient, patient_col)
    if check_files:
        check_datalist(ordered, source=str(csv_path))
    return _make_datalist(f"built from {csv_path}", task, names, splits)


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------


def _has_dicm_magic(path: Path) -> bool:
    """Whether the file has the DICOM Part 10 preamble + ``DICM`` marker."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _looks_like_dicom(path: Path) -> bool:
    """Cheap test (name or magic, no parsing) used to detect a DICOM folder."""
    return path.name.lower().endswith((".dcm", ".dicom")) or _has_dicm_magic(path)


def _read_dicom_header(path: Path):
    """The header of ``path`` if it is a DICOM image, else ``None``.

    Files with a ``.dcm`` ending or the ``DICM`` marker must parse (else DatalistError); other
    files (except known non-DICOM endings) are probed with ``force=True`` and taken when the
    header has an image (``Rows``, or ``PixelData``).
    """
    from monai_cxrssl.data.io import parse_dicom  # local: keeps `import monai_cxrssl.data.datalist` light

    claimed = _looks_like_dicom(path)
    if not claimed and (path.name.lower().endswith(_NOT_DICOM_EXTENSIONS) or path.name.upper() == "DICOMDIR"):
        return None
    try:
        with warnings.catch_warnings():  # probing non-DICOM files makes pydicom warn about garbage tags
            warnings.simplefilter("ignore")
            ds = parse_dicom(path, stop_before_pixels=True)
    except CXRReadError as e:
        if claimed:
            raise DatalistError(f"cannot read the DICOM header of '{path}': {e.reason}") from e
        return None
    has_image = "Rows" in ds or "PixelData" in ds
    if claimed and not has_image:
        logger.warning("skipping DICOM file '%s': it holds no image (no Rows / PixelData)", path)
    return ds if has_image else None


def _dicom_entry(path: Path, ds) -> dict[str, Any]:
    """Datalist entry of a DICOM image: patient id from ``PatientID`` (else the file stem), study id."""
    entry: dict[str, Any] = {"image": str(path)}
    pid = str(ds.get("PatientID", "") or "").strip()
    if not pid:
        pid = _stem(path)
        logger.warning("DICOM file '%s' has no PatientID; using the file stem '%s' as patient id", path, pid)
    entry["patient_id"] = pid
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if study:
        entry["study_id"] = study
    return entry


def datalist_from_image_folder(root: str | os.PathLike, *, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> dict:
    """Datalist of every radiograph below ``root``, unlabeled, all in ``"training"`` (e.g. for inference).

    Files with an image ending are taken as they are (DICOM ones with their header's patient and
    study); other files are taken when they are DICOM images (files without ending or meta header).

    Raises:
        DatalistError: ``root`` is missing or holds no image.
    """
    root = _require_dir(root, "image folder")
    exts = _normalize_extensions(extensions)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(s.startswith(".") for s in p.relative_to(root).parts)):
        if _looks_like_dicom(path) or not _has_extension(path, exts):
            ds = _read_dicom_header(path)
            if ds is not None:
                entries.append(_dicom_entry(path, ds))
        else:
            entries.append({"image": str(path), "patient_id": ""})
    if not entries:
        raise DatalistError(f"no radiographs found below '{root}' (expected files ending in {list(exts)} or DICOM files)")
    return _make_datalist(f"images under {root}", "unlabeled", [], {"training": entries})


def datalist_from_dicom_folder(root: str | os.PathLike, *, recursive: bool = True) -> dict:
    """Datalist of the DICOM images in a folder (unlabeled, all in ``"training"``).

    A file is taken when its header (read by :func:`monai_cxrssl.data.io.parse_dicom`, without the
    pixels) has an image: ``.dcm`` files and files with the ``DICM`` marker,
    and also files without a meta header and without the ``.dcm`` ending. Hidden files and
    ``DICOMDIR`` are skipped.

    Each entry has ``image``, ``patient_id`` (the ``PatientID`` tag; when absent or empty, the file
    stem, with a logged warning, i.e. the image is its own patient) and ``study_id``
    (``StudyInstanceUID``) when present.

    Args:
        root: the folder.
        recursive: also look in sub-folders (for patient/study/series trees).

    Raises:
        DatalistError: ``root`` is missing or holds no DICOM image; a ``.dcm`` file cannot be parsed.
    """
    root = _require_dir(root, "DICOM folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = sorted(
        p for p in candidates if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
    entries = []
    for path in files:
        ds = _read_dicom_header(path)
        if ds is None:
            continue
        entries.append(_dicom_entry(path, ds))
    if not entries:
        raise DatalistError(
            f"no DICOM images found {'below' if recursive else 'in'} '{root}' "
            f"(expected files with a DICOM header holding an image, e.g. *.dcm)"
        )
    return _make_datalist(f"DICOM files under {root}", "unlabeled", [], {"training": entries})


# ----------------------------------------------------------------------------------------------
# auto-detection
# ----------------------------------------------------------------------------------------------


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _datalist_from_labels_csv(csv_path: Path) -> dict:
    """The CSV builder with columns chosen by name (see :func:`build_datalist`)."""
    header = set(_csv_header(csv_path))

    def col(*names: str) -> str | None:
        return next((n for n in names if n in header), None)

    labels_col = col("finding_labels", "labels")
    return datalist_from_csv(
        csv_path,
        labels_col=labels_col,
        label_col=None if labels_col else col("label", "binary_label"),
        patient_col=col("patient_id"),
        split_col=col("split"),
        study_col=col("study_id"),
    )


def _find_dicom(root: Path, max_files: int = 1000) -> bool:
    """Whether any of the first ``max_files`` files below ``root`` looks like DICOM."""
    for i, p in enumerate(f for f in root.rglob("*") if f.is_file()):
        if i >= max_files:
            return False
        if _looks_like_dicom(p):
            return True
    return False


def build_datalist(dataset_dir: str | os.PathLike) -> dict:
    """Datalist of a dataset folder, whose layout is detected. The first that applies wins:

    1. ``dataset_dir/datalist.json``: loaded with :func:`load_datalist` (all splits present).
       ``dataset_dir`` may also be a ``.json`` datalist or a ``.csv`` table itself.
    2. ``dataset_dir/labels.csv`` with an ``image`` column: :func:`datalist_from_csv` with,
       when those columns exist, ``labels_col="finding_labels"`` (or ``"labels"``) for a
       multi-label task, else ``label_col="label"`` (or ``"binary_label"``); and
       ``patient_col="patient_id"``, ``split_col="split"``, ``study_col="study_id"``.
       The NIH ChestX-ray14 subset gives a 14-finding multi-label datalist.
    3. split folders (``train``, ``val``, ``valid``, ``test``...) of class folders:
       :func:`datalist_from_class_folders`.
    4. DICOM files (``.dcm`` or ``DICM`` marker) anywhere below: :func:`datalist_from_dicom_folder`.
       (Class folders of DICOMs without split folders are taken as a DICOM tree: call
       :func:`datalist_from_class_folders` for those.)
    5. class folders of images: :func:`datalist_from_class_folders`.

    Raises:
        DatalistError: none of these layouts applies (the message lists them).
    """
    path = Path(dataset_dir)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return load_datalist(path, keys=None)
        if path.suffix.lower() == ".csv":
            return _datalist_from_labels_csv(path)
        raise DatalistError(f"'{path}' is a file but neither a .json datalist nor a .csv table")
    root = _require_dir(path, "dataset folder")
    if (root / _DATALIST_FILE).is_file():
        return load_datalist(root / _DATALIST_FILE, keys=None)
    labels_csv = root / _LABELS_CSV
    if labels_csv.is_file() and "image" in _csv_header(labels_csv):
        return _datalist_from_labels_csv(labels_csv)
    folders = [p for p in _visible_children(root) if p.is_dir()]
    if any(p.name.lower() in DEFAULT_SPLIT_NAMES for p in folders):
        return datalist_from_class_folders(root)
    if _find_dicom(root):
        return datalist_from_dicom_folder(root)
    if folders:
        return datalist_from_class_folders(root)
    raise DatalistError(
        f"cannot tell the layout of '{root}'. Supported: a '{_DATALIST_FILE}' datalist; a '{_LABELS_CSV}' "
        f"with an 'image' column; split folders (train/val/valid/test) of class folders of images; "
        f"DICOM files (*.dcm); class folders of images ({', '.join(IMAGE_EXTENSIONS)})"
    )


# ----------------------------------------------------------------------------------------------
# JSON I/O
# ----------------------------------------------------------------------------------------------


def _map_images(entries: list, fn: Callable[[str], str]) -> list:
    """Copies of ``entries`` with ``fn`` applied to each image path (str or list of str)."""
    out = []
    for e in entries:
        e = dict(e)
        if "image" in e:
            img = e["image"]
            e["image"] = [fn(os.fspath(p)) for p in img] if isinstance(img, (list, tuple)) else fn(os.fspath(img))
        out.append(e)
    return out


def load_datalist(
    path: str | os.PathLike,
    keys: Sequence[str] | str | None = ("training",),
    base_dir: str | os.PathLike | None = None,
) -> dict:
    """Load a datalist JSON file, resolving relative image paths.

    Like :func:`monai.data.load_decathlon_datalist`, relative ``image`` paths are joined to
    ``base_dir`` (default: the JSON file's folder) and normalized; absolute paths are kept; a
    ``"test"`` list of bare paths becomes ``[{"image": path}, ...]``. Unlike it, only ``image`` is
    treated as a path (MONAI joins any string that happens to name an existing file, which could
    rewrite a patient id such as ``"train/IM-0001"``), and the metadata (``classes``, ``task``,
    ``description``...) is kept.

    Args:
        path: the JSON file.
        keys: the split keys to load (each must be in the file); ``None``: every split key present.
        base_dir: folder relative image paths are relative to; default the file's folder.

    Returns:
        a dict with the requested lists (entries are checked for an ``image`` key, not for files:
        see :func:`check_datalist`) and every non-list top-level item of the file.

    Raises:
        DatalistError: the file is missing or not valid JSON, is not a JSON object, lacks a
            requested key, or an entry is not a dict with an ``image``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"datalist file '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatalistError(f"datalist file '{path}' is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatalistError(f"datalist file '{path}' must hold a JSON object, got {type(data).__name__}")
    if isinstance(data.get("test"), list):  # decathlon style: "test": ["a.nii.gz", ...]
        data["test"] = [{"image": e} if isinstance(e, str) else e for e in data["test"]]
    available = split_keys(data)
    if keys is None:
        keys = available
        if not keys:
            raise DatalistError(f"datalist file '{path}' has no list of entries (expected keys such as {SPLIT_KEYS})")
    elif isinstance(keys, str):
        keys = [keys]
    base = os.path.abspath(base_dir if base_dir is not None else path.parent)
    out = {k: v for k, v in data.items() if k not in available}  # metadata; splits added below
    for key in keys:
        if key not in data:
            raise DatalistError(f"datalist file '{path}' has no '{key}' key; keys present: {list(data)}")
        items = data[key]
        if not isinstance(items, list):
            raise DatalistError(
                f"datalist file '{path}': '{key}' must be a list of entries, got {type(items).__name__}"
            )
        if items:
            check_datalist(items, check_files=False, source=f"{path} '{key}'")
        out[key] = _map_images(items, lambda p: os.path.normpath(os.path.join(base, p)))
    return out


def _json_default(obj: Any) -> Any:
    """JSON encoding of numpy scalars/arrays and paths found in entries."""
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_datalist(datalist: Mapping[str, Any], path: str | os.PathLike, *, relative: bool = True) -> Path:
    """Write a datalist as JSON, atomically (temporary file in the same folder + ``os.replace``).

    Args:
        datalist: the datalist dict; its split lists are written after the metadata.
        path: the JSON file to write (parent folders are created).
        relative: write image paths relative to the file's folder (so that the file can be
            moved together with the data), as :func:`load_datalist` expects; relative paths
            in ``datalist`` are taken relative to the current directory. ``False``: absolute.

    Returns:
        the path written.

    Raises:
        DatalistError: ``datalist`` is not a dict or has no list of entries.
    """
    keys = require_split_keys(datalist, f"writing '{path}'")
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = str(path.parent)

    inside = folder.rstrip(os.sep) + os.sep

    def to_file(p: str) -> str:
        p = os.path.abspath(p)
        if not relative:
            return p
        return p[len(inside):] if p.startswith(inside) else os.path.relpath(p, folder)

    out = {k: v for k, v in datalist.items() if k not in keys}
    for key in keys:
        if datalist[key]:
            check_datalist(datalist[key], check_files=False, source=f"datalist '{key}'")
        out[key] = _map_images(datalist[key], to_file)
    with atomic_write(path, "w", encoding="utf-8") as f:
        _dump(out, keys, f)
    return path


def _dump(datalist: Mapping[str, Any], keys: Sequence[str], f) -> None:
    """The datalist as JSON with one entry per line: readable, and encoded by the C encoder (``json.dump`` with
    ``indent`` takes the pure-Python one: a minute for a few hundred thousand entries)."""
    encode = json.JSONEncoder(default=_json_default, ensure_ascii=False).encode
    parts = []
    for key, value in datalist.items():
        if key in keys and value:
            parts.append(f" {encode(key)}: [\n" + ",\n".join("  " + encode(e) for e in value) + "\n ]")
        else:
            parts.append(f" {encode(key)}: " + json.dumps(value, indent=1, default=_json_default,
                                                          ensure_ascii=False).replace("\n", "\n "))
    f.write("{\n" + ",\n".join(parts) + "\n}\n")
