"""Command line of monai_cxrssl: ``python -m monai_cxrssl <command> ...``.

Commands::

    python -m monai_cxrssl datalist folders ROOT -o datalist.json
    python -m monai_cxrssl datalist csv labels.csv --labels-col finding_labels \\
        --patient-col patient_id --split-col split -o datalist.json
    python -m monai_cxrssl datalist dicom ROOT -o datalist.json
    python -m monai_cxrssl datalist dicomweb http://pacs:8042/dicom-web --cache-dir dicom_cache -o datalist.json
    python -m monai_cxrssl datalist auto DATASET_DIR -o datalist.json
    python -m monai_cxrssl split datalist.json -o resplit.json --val 0.1 --test 0.1 --seed 0
    python -m monai_cxrssl leakage datalist.json
    python -m monai_cxrssl rankme t0.1=runs/t0.1/embeddings t0.2=runs/t0.2/embeddings
    python -m monai_cxrssl large-files bundles/simclr_cxr --url-prefix https://example.org/simclr_cxr/models

Adding a command: write a function ``register(subparsers)`` that calls
``subparsers.add_parser(name, help=...)``, declares its arguments and sets
``parser.set_defaults(func=handler)``, where ``handler(args)`` returns the exit code (``None``
means 0); then add it to :data:`REGISTRARS`, either as the function or as a
``"package.module:function"`` string (imported only when the command line is built, so that the
module may live elsewhere). Handlers should import heavy dependencies (torch, the engine) inside
their body, to keep ``--help`` and the light commands fast. A
:class:`~monai_cxrssl.exceptions.CXRSSLError` raised by a handler is printed as ``error: ...``
with exit code 1; argument errors exit with code 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from monai_cxrssl.exceptions import CXRSSLError

__all__ = ["REGISTRARS", "build_parser", "main"]

Registrar = Callable[[Any], None]  # receives the object returned by ArgumentParser.add_subparsers()


def _summary(datalist: dict) -> str:
    """One line per split: entries, entries per class (single-label) or positives per finding, patients."""
    from monai_cxrssl.data.datalist import split_keys

    classes = datalist.get("classes") or []

    def name(c: Any) -> str:
        return classes[c] if isinstance(c, int) and 0 <= c < len(classes) else str(c)

    lines = [f"task: {datalist.get('task', '?')}, {len(classes)} classes"]
    for key in split_keys(datalist):
        entries = datalist[key]
        text = f"  {key}: {len(entries)}"
        if entries and "label" in entries[0]:
            counts = sorted(Counter(e.get("label") for e in entries).items(), key=lambda kv: str(kv[0]))
            text += " (" + ", ".join(f"{name(c)} {n}" for c, n in counts) + ")"
        elif entries and "labels" in entries[0]:
            positives = [sum(e["labels"][j] for e in entries) for j in range(len(classes))]
            text += " (positives: " + ", ".join(f"{c} {n}" for c, n in zip(classes, positives)) + ")"
        patients = {e["patient_id"] for e in entries if e.get("patient_id") is not None}
        lines.append(f"{text}, {len(patients)} patients")
    return "\n".join(lines)


def _write(datalist: dict, out: str) -> int:
    from monai_cxrssl.data.datalist import write_datalist

    path = write_datalist(datalist, out)
    print(f"wrote {path}")
    print(_summary(datalist))
    return 0


# ---------------------------------------------------------------------------------------------
# datalist
# ---------------------------------------------------------------------------------------------


def _cmd_datalist_folders(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.datalist import IMAGE_EXTENSIONS, datalist_from_class_folders

    datalist = datalist_from_class_folders(args.root, extensions=args.ext or IMAGE_EXTENSIONS)
    return _write(datalist, args.output)


def _cmd_datalist_csv(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.datalist import datalist_from_csv

    datalist = datalist_from_csv(
        args.csv,
        image_col=args.image_col,
        label_col=args.label_col,
        labels_col=args.labels_col,
        labels_sep=args.labels_sep,
        patient_col=args.patient_col,
        split_col=args.split_col,
        classes=args.classes.split(",") if args.classes else None,
        no_finding=args.no_finding,
        base_dir=args.base_dir,
        study_col=args.study_col,
        check_files=not args.no_check_files,
    )
    return _write(datalist, args.output)


def _cmd_datalist_dicom(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.datalist import datalist_from_dicom_folder

    return _write(datalist_from_dicom_folder(args.root, recursive=not args.no_recursive), args.output)


def _cmd_datalist_auto(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.datalist import build_datalist

    return _write(build_datalist(args.dataset), args.output)


def _cmd_datalist_dicomweb(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.dicomweb import datalist_from_dicomweb, join_labels, read_lines
    from monai_cxrssl.exceptions import DatalistError

    datalist = datalist_from_dicomweb(
        args.url,
        args.cache_dir,
        modalities=args.modality,
        study_date=args.study_date,
        study_uids=args.study_uid or (),
        series_uids=args.series_uid or (),
        accessions=read_lines(args.accessions) if args.accessions else (),
        num_workers=args.workers,
        progress=not args.no_progress,
        deidentify=args.deidentify,
    )
    if args.labels:
        datalist = join_labels(datalist, args.labels, key=args.label_key, label_col=args.label_col,
                               labels_col=args.labels_col, split_col=args.split_col, deidentify=args.deidentify)
    elif args.label_col or args.labels_col or args.split_col:
        raise DatalistError("--label-col, --labels-col and --split-col need --labels (the CSV to read them from)")
    return _write(datalist, args.output)


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", required=True, help="datalist JSON to write (image paths relative to its folder)"
    )


def _register_datalist(subparsers) -> None:
    parser = subparsers.add_parser(
        "datalist",
        help="build a datalist JSON from class folders, a CSV table or DICOM files",
        description="Build a MONAI datalist JSON (training/validation/test entries with image, label(s), "
        "patient_id) from a dataset.",
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    p = sources.add_parser(
        "folders",
        help="ROOT/<split>/<class>/<images> or ROOT/<class>/<images>",
        description="Class-per-folder tree; split folders train, val/valid, test map to training, "
        "validation, test. Classes are sorted alphabetically; patient ids are parsed from Kermany "
        "file names (else the file stem) and prefixed with the split folder.",
    )
    p.add_argument("root", help="dataset folder")
    p.add_argument("--ext", nargs="+", help="image file endings (default: png jpg jpeg dcm dicom nii nii.gz)")
    _add_output(p)
    p.set_defaults(func=_cmd_datalist_folders)

    p = sources.add_parser(
        "csv",
        help="a CSV table with one row per image",
        description="CSV table with one row per image. Give --label-col (single-label) or --labels-col "
        "(multi-label, separated findings) or neither (unlabeled).",
    )
    p.add_argument("csv", help="the CSV file")
    p.add_argument("--image-col", default="image", help="column of image paths (default: image)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--label-col", help="single-label column (class names)")
    group.add_argument("--labels-col", help="multi-label column (findings separated by --labels-sep)")
    p.add_argument("--labels-sep", default="|", help="separator of findings (default: |)")
    p.add_argument("--no-finding", default="No Finding", help="token meaning no finding (default: 'No Finding')")
    p.add_argument("--classes", help="comma-separated class/finding names in index order (default: sorted values)")
    p.add_argument("--patient-col", help="column of patient ids")
    p.add_argument("--study-col", help="column of study ids")
    p.add_argument("--split-col", help="column of splits (train/val/valid/test); default: all training")
    p.add_argument("--base-dir", help="folder relative image paths are relative to (default: the CSV's folder)")
    p.add_argument("--no-check-files", action="store_true", help="do not check that the image files exist")
    _add_output(p)
    p.set_defaults(func=_cmd_datalist_csv)

    p = sources.add_parser(
        "dicom",
        help="DICOM files below ROOT (unlabeled)",
        description="Every DICOM image below ROOT (also files without meta header), in training, with "
        "patient_id from PatientID (else the file stem) and study_id from StudyInstanceUID.",
    )
    p.add_argument("root", help="folder of DICOM files")
    p.add_argument("--no-recursive", action="store_true", help="do not look into sub-folders")
    _add_output(p)
    p.set_defaults(func=_cmd_datalist_dicom)

    p = sources.add_parser(
        "dicomweb",
        help="radiographs from a DICOMweb server (QIDO-RS, WADO-RS) into a local cache",
        description="Find the radiographs on a DICOMweb server (QIDO-RS), retrieve them (WADO-RS) into CACHE_DIR/"
        "<study>/<series>/<instance>.dcm (in parallel; a rerun fetches only what is missing) and write their "
        "datalist (patient_id, study_uid, series_uid, sop_uid, accession). Credentials: CXRSSL_DICOMWEB_TOKEN, or "
        "CXRSSL_DICOMWEB_USER and CXRSSL_DICOMWEB_PASSWORD, or ~/.netrc; never on the command line.",
    )
    p.add_argument("url", help="the DICOMweb root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--cache-dir", required=True, help="folder of the retrieved DICOM files")
    p.add_argument("--modality", nargs="+", default=["CR", "DX"], help="modalities searched, or 'any' (default: CR DX)")
    p.add_argument("--study-date", help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    p.add_argument("--study-uid", nargs="+", help="only these studies")
    p.add_argument("--series-uid", nargs="+", help="only these series")
    p.add_argument("--accessions", help="a text file of accession numbers, one per line")
    p.add_argument("--workers", type=int, default=4, help="parallel retrievals (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--deidentify", metavar="MAPPING_JSON",
                   help="de-identify the local copies (dicognito: names, ids, UIDs and dates re-mapped consistently); "
                   "the key and the originals of the pseudonyms go to this file, which must be outside the cache")
    p.add_argument("--labels", help="a CSV of labels joined to the retrieved images (images without a row are left out "
                   "and counted)")
    p.add_argument("--label-key", default="accession", choices=["accession", "study_uid", "series_uid", "sop_uid"],
                   help="what the labels CSV is keyed by: its column of that name (default: accession)")
    p.add_argument("--label-col", help="single-label column of the labels CSV (class names)")
    p.add_argument("--labels-col", help="multi-label column of the labels CSV ('|'-separated findings)")
    p.add_argument("--split-col", help="column of the labels CSV giving each row's split (train/val/test)")
    _add_output(p)
    p.set_defaults(func=_cmd_datalist_dicomweb)

    p = sources.add_parser(
        "auto",
        help="detect the layout of DATASET (datalist.json, labels.csv, class folders, DICOM)",
        description="Detect the layout of DATASET: datalist.json, labels.csv with an image column, "
        "split/class folders, DICOM files.",
    )
    p.add_argument("dataset", help="dataset folder (or a .json / .csv file)")
    _add_output(p)
    p.set_defaults(func=_cmd_datalist_auto)


# ---------------------------------------------------------------------------------------------
# split, leakage
# ---------------------------------------------------------------------------------------------


def _cmd_split(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.datalist import load_datalist, split_keys
    from monai_cxrssl.data.splits import patient_split

    datalist = load_datalist(args.datalist, keys=None)
    keys = split_keys(datalist)
    entries = [e for key in keys for e in datalist[key]]
    splits = patient_split(
        entries,
        val_fraction=args.val,
        test_fraction=args.test,
        seed=args.seed,
        group_key=args.group_key,
        stratify_key=None if args.stratify_key == "none" else args.stratify_key,
    )
    out = {k: v for k, v in datalist.items() if k not in keys}
    out["description"] = (
        f"{datalist.get('description', args.datalist)}; patient-level re-split "
        f"(val {args.val}, test {args.test}, seed {args.seed})"
    )
    out.update(splits)
    return _write(out, args.output)


def _register_split(subparsers) -> None:
    p = subparsers.add_parser(
        "split",
        help="re-split all entries of a datalist by patient (no patient in two splits), stratified",
        description="Pool every entry of DATALIST and split it again by patient, stratified by label "
        "(multi-label: rarest positive finding).",
    )
    p.add_argument("datalist", help="datalist JSON")
    _add_output(p)
    p.add_argument("--val", type=float, default=0.1, help="validation fraction of entries (default: 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="test fraction of entries (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--group-key", default="patient_id", help="patient key (default: patient_id)")
    p.add_argument("--stratify-key", default="label", help="key stratified by, or 'none' (default: label)")
    p.set_defaults(func=_cmd_split)


def _cmd_leakage(args: argparse.Namespace) -> int:
    from monai_cxrssl.data.datalist import load_datalist
    from monai_cxrssl.data.splits import format_leakage_report, leakage_report

    report = leakage_report(load_datalist(args.datalist, keys=None), group_key=args.group_key)
    print(json.dumps(report, indent=1) if args.json else format_leakage_report(report, args.max_patients))
    return 1 if args.fail_on_leak and report["n_patients_leaking"] else 0


def _register_leakage(subparsers) -> None:
    p = subparsers.add_parser(
        "leakage",
        help="report patients present in more than one split of a datalist",
        description="Report the patients whose images are in more than one split. Exit code 0 "
        "(1 with --fail-on-leak when a patient leaks).",
    )
    p.add_argument("datalist", help="datalist JSON")
    p.add_argument("--group-key", default="patient_id", help="patient key (default: patient_id)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-patients", type=int, default=20, help="leaking patients listed (default: 20)")
    p.add_argument("--fail-on-leak", action="store_true", help="exit with code 1 when a patient leaks")
    p.set_defaults(func=_cmd_leakage)


def _cmd_rankme(args: argparse.Namespace) -> int:
    from monai_cxrssl.evaluation.rankme import format_rankme_table, rank_encoders

    folders = {}
    for spec in args.candidates:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise CXRSSLError(f"rankme: '{spec}' is not NAME=EMBEDDINGS_FOLDER")
        if name in folders:
            raise CXRSSLError(f"rankme: candidate name '{name}' is given twice")
        folders[name] = folder
    rows = rank_encoders(folders)
    print(json.dumps(rows, indent=1) if args.json else format_rankme_table(rows))
    return 0


def _register_rankme(subparsers) -> None:
    p = subparsers.add_parser(
        "rankme",
        help="rank pretrained encoders by RankMe on unlabelled images (label-free recipe choice)",
        description="RankMe (Garrido et al., ICML 2023), the effective rank of each candidate's embeddings of "
        "the same unlabelled images, highest first. Within one method it tracks downstream accuracy, so it picks "
        "a recipe without spending labels. Each folder is an inference.json embeddings_dir.",
    )
    p.add_argument("candidates", nargs="+", metavar="NAME=FOLDER", help="a candidate and its embeddings folder")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=_cmd_rankme)


def _cmd_export(args: argparse.Namespace) -> int:
    from monai_cxrssl.engines.classification import export_torchscript

    print(export_torchscript(args.model_dir, args.output))
    return 0


def _register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained classifier to TorchScript (checked against the eager model)",
        description="Trace the best model of a cxr_classifier run (its output_dir) and save it with its "
        "model_info as TorchScript metadata; the traced model must reproduce the eager outputs.",
    )
    p.add_argument("model_dir", help="the classifier run's output_dir (holding models/model.pt and model_info.json)")
    p.add_argument("-o", "--output", help="the .ts file (default: MODEL_DIR/models/model.ts)")
    p.set_defaults(func=_cmd_export)


def _cmd_large_files(args: argparse.Namespace) -> int:
    from pathlib import Path

    from monai_cxrssl.bundle_publish import LARGE_FILES, write_large_files

    entries = write_large_files(args.bundle, args.url_prefix, args.ckpt_dir)
    print(f"wrote {Path(args.bundle) / LARGE_FILES}")
    for entry in entries:
        print(f"  {entry['path']} <- {entry['url']} (sha256 {entry['hash_val'][:12]}...)")
    return 0


def _register_large_files(subparsers) -> None:
    p = subparsers.add_parser(
        "large-files",
        help="write a trained bundle's large_files.yml (the model zoo's list of its weights, URLs and hashes)",
        description="List every file of BUNDLE/models (the ckpt_dir training wrote) in BUNDLE/large_files.yml, "
        "at URL_PREFIX/<name> with its SHA-256, for MONAI's download_large_files and the model zoo. "
        "Upload the folder's files under URL_PREFIX.",
    )
    p.add_argument("bundle", help="the trained bundle's folder")
    p.add_argument("--url-prefix", required=True, help="URL the files of models/ are uploaded under")
    p.add_argument("--ckpt-dir", default="models", help="weights folder inside the bundle (default: models)")
    p.set_defaults(func=_cmd_large_files)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------

#: Functions ``register(subparsers)`` adding one command each, or ``"module:function"`` strings.
REGISTRARS: list[Registrar | str] = [_register_datalist, _register_split, _register_leakage, _register_export,
                                     _register_rankme, _register_large_files]


def _resolve(registrar: Registrar | str) -> Registrar:
    if callable(registrar):
        return registrar
    module, _, name = registrar.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(registrars: Sequence[Registrar | str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with one sub-command per registrar (default :data:`REGISTRARS`)."""
    from monai_cxrssl import __version__

    parser = argparse.ArgumentParser(
        prog="python -m monai_cxrssl",
        description="monai_cxrssl: self-supervised pretraining for chest X-ray classification on MONAI.",
    )
    parser.add_argument("--version", action="version", version=f"monai_cxrssl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for registrar in REGISTRARS if registrars is None else registrars:
        _resolve(registrar)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except CXRSSLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
