"""The classifier's results as DICOM Structured Reports, one per radiograph, for viewers, archives and downstream
systems: a TID 1500 *Imaging Measurement Report* (Comprehensive 3D SR, made with ``highdicom``) in the source
image's study, holding one measurement group per output (the finding, and its probability), each referencing the
source instance (SOP class and instance UID; study, series and instance in the evidence), and identifying the model:
its name, version and training provenance from ``model_info.json``.

::

    paths = write_structured_reports("inference/predictions.csv", model_dir="models", output_dir="inference/sr")
    store_instances("http://pacs:8042/dicom-web", paths)       # STOW-RS (monai_cxrssl.data.dicomweb)
    read_structured_report(paths[0])  # {"source_sop_uid", "source_series_uid", "study_uid", "probabilities", ...}

The inference bundle does both when given ``--dicomweb_output URL`` (or ``--structured_reports true`` to write them
only), through :class:`StructuredReports`, which checks before inference starts that every image is a DICOM file
with the UIDs a report needs, and that the server answers with the credentials given.

Codes: the procedure is SNOMED CT 399208008 *Plain chest X-ray*; each output's finding and the *Probability*
measurement are in a local coding scheme, ``99CXRSSL`` (the meaning is the class name as the model was trained
with it; mapping them to RadLex or SNOMED CT is left to the site). A probability is stored as a decimal string
(DS, 16 characters) and exactly as the 64-bit float the CSV holds (Floating Point Value, FD).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from monai_cxrssl.exceptions import CheckpointError, DatalistError, DicomWebError
from monai_cxrssl.utils import as_bool, atomic_write

__all__ = ["StructuredReports", "write_structured_reports", "structured_report", "read_structured_report",
           "model_algorithm", "CODING_SCHEME", "SERIES_DESCRIPTION"]

logger = logging.getLogger(__name__)

#: the local coding scheme of the findings and of the probability measurement
CODING_SCHEME = "99CXRSSL"
SERIES_DESCRIPTION = "monai_cxrssl classifier results"
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "AccessionNumber", "ReferringPhysicianName")


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "procedure": CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        "probability": CodedConcept("PROB", CODING_SCHEME, "Probability"),
        "unitless": CodedConcept("1", "UCUM", "no units"),
    }


def _finding(name: str):
    """The finding's code in the local scheme: a digest of its name (codes are at most 16 characters; names that
    share their first 16 must not share a code), its meaning the name."""
    from highdicom.sr import CodedConcept

    return CodedConcept(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16].upper(), CODING_SCHEME, name)


def model_algorithm(model_dir: str | os.PathLike) -> dict[str, Any]:
    """What the reports say of the model in ``model_dir``: ``name`` (backbone, mode and task), ``version`` (the
    project's version and the first 12 hex digits of the weights' SHA-256) and ``parameters`` (its training
    provenance from ``model_info.json``: initialisation, label and patient counts, model selection)."""
    from monai_cxrssl import __version__
    from monai_cxrssl.checkpoints import file_sha256
    from monai_cxrssl.engines import read_model_info, trained_model_file

    info = read_model_info(model_dir)
    weights = Path(trained_model_file(model_dir))
    if not weights.is_file():
        raise CheckpointError(f"'{weights}' does not exist: expected the weights of a trained classifier")
    backbone = (info.get("backbone") or {}).get("name", "unknown")
    init = info.get("init") or {}
    parameters = [f"task={info.get('task')}", f"classes={','.join(map(str, info.get('classes') or []))}",
                  f"image_size={info.get('image_size')}", f"label_fraction={info.get('label_fraction')}",
                  f"n_labels={info.get('n_labels')}", f"n_patients={info.get('n_patients')}",
                  f"selection={info.get('selection')}"]
    if init:
        parameters.append(f"init={init.get('method') or init.get('format')} epoch={init.get('epoch')} "
                          f"sha256={str(init.get('sha256', ''))[:12]}")
    return {"name": f"monai_cxrssl cxr_classifier {backbone} {info.get('mode', '')}".strip(),
            "version": f"{__version__}+{file_sha256(weights)[:12]}", "parameters": parameters, "info": info}


def _source_header(path: Path):
    """The source image's header (no pixels), with the UIDs a report needs; a clear error otherwise."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise DatalistError(f"'{path}' does not exist: a structured report references its source DICOM file")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise DatalistError(f"'{path}' is not a readable DICOM file ({e}): structured reports need DICOM "
                            "sources") from None
    missing = [k for k in _REQUIRED if not str(ds.get(k, "")).strip()]
    if missing:
        raise DatalistError(f"'{path}' is not a DICOM image with {', '.join(missing)}: a structured report "
                            "references its source by these UIDs (PNG or JPEG inputs cannot be reported as DICOM)")
    for keyword in _TYPE2:  # the report copies the patient and study modules: absent type 2 attributes are empty
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def structured_report(source, probabilities: Mapping[str, float], algorithm: Mapping[str, Any], *,
                      series_uid: str, instance_number: int = 1, series_number: int = 9901):
    """One Comprehensive 3D SR (TID 1500) for ``source`` (its pydicom header): one measurement group per output,
    each with the finding, its probability and the model's identification, referencing ``source``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    c = _codes()
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm["name"], version=algorithm["version"],
                                                  parameters=list(algorithm.get("parameters") or []) or None)
    source_image = hd.sr.SourceImageForMeasurementGroup(referenced_sop_class_uid=source.SOPClassUID,
                                                        referenced_sop_instance_uid=source.SOPInstanceUID)
    groups = []
    for k, (name, p) in enumerate(probabilities.items(), 1):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{name} ({k})"),
            finding_type=_finding(name), algorithm_id=algorithm_id, source_images=[source_image],
            measurements=[hd.sr.Measurement(name=c["probability"], value=float(p), unit=c["unitless"])]))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm["name"][:64], manufacturer_name="monai_cxrssl",
            model_name=algorithm["version"][:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=c["procedure"], imaging_measurements=groups)
    with warnings.catch_warnings():  # highdicom's advice on the source's PatientName, which is copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source], content=report[0], series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer="monai_cxrssl",
            is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = SERIES_DESCRIPTION
    _exact_values(sr, list(probabilities.values()))
    return sr


def _exact_values(sr, values: Sequence[float]) -> None:
    """Add each probability's exact 64-bit value (Floating Point Value, FD) beside its decimal string, in the order
    the measurements were written."""
    it = iter(values)
    for item in _num_items(sr):
        for mv in item.MeasuredValueSequence:
            mv.FloatingPointValue = float(next(it))


def _num_items(ds):
    """The NUM content items of an SR, depth first in document order."""
    for item in getattr(ds, "ContentSequence", []):
        if item.get("ValueType") == "NUM":
            yield item
        yield from _num_items(item)


def _read_predictions(path: Path) -> tuple[list[str], list[str], list[list[float]]]:
    """``(images, outputs, probabilities)`` of a ``predictions.csv`` (labelled or not)."""
    if not path.is_file():
        raise DatalistError(f"'{path}' does not exist: expected the predictions.csv of an inference run")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or not rows[0] or rows[0][0] != "image":
        raise DatalistError(f"'{path}' holds no predictions (expected a header image, patient_id, prob_<output>...)")
    header = rows[0]
    cols = [i for i, c in enumerate(header) if c.startswith("prob_")]
    outputs = [header[i][len("prob_"):] for i in cols]
    return [r[0] for r in rows[1:]], outputs, [[float(r[i]) for i in cols] for r in rows[1:]]


def _write_one(job: tuple) -> Path:
    """Build and save one report (in a worker process): ``(source header, probabilities, algorithm, series UID,
    instance number, output path)``."""
    header, probabilities, algorithm, series_uid, instance_number, path = job
    sr = structured_report(header, probabilities, algorithm, series_uid=series_uid, instance_number=instance_number)
    with atomic_write(path) as f:
        sr.save_as(f, enforce_file_format=True)
    return path


def write_structured_reports(predictions_csv: str | os.PathLike, model_dir: str | os.PathLike,
                             output_dir: str | os.PathLike, num_workers: int | None = None,
                             progress: bool = True) -> list[Path]:
    """One SR per row of ``predictions_csv`` (its ``image`` must be the source DICOM file), written atomically as
    ``output_dir/<source SOP instance UID>.dcm``; each study's reports form one new series. Returns the paths.

    Every source is checked before anything is written. ``highdicom`` takes about 0.2-0.4 s of CPU to build a
    report, so they are built in ``num_workers`` processes (default: every CPU, at most 8), forked so that they do
    not wait for a fresh interpreter's imports. Forking after PyTorch has run is safe here because the workers run
    pydicom and highdicom only: no torch, no OpenMP or CUDA call, whose state a fork does not carry over."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    import highdicom as hd
    from tqdm.auto import tqdm

    images, outputs, probs = _read_predictions(Path(predictions_csv))
    algorithm = model_algorithm(model_dir)
    headers = [_source_header(Path(p)) for p in images]  # every source checked before anything is written
    first: dict[str, str] = {}
    for image, header in zip(images, headers):
        other = first.setdefault(str(header.SOPInstanceUID), image)
        if other != image:
            raise DatalistError(f"'{image}' and '{other}' are the same instance (SOP instance UID "
                                f"{header.SOPInstanceUID}): one report per instance; drop the copy from the input")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, str] = {}
    counts: dict[str, int] = {}
    jobs = []
    for header, p in zip(headers, probs):
        study = str(header.StudyInstanceUID)
        series.setdefault(study, str(hd.UID()))
        counts[study] = counts.get(study, 0) + 1
        jobs.append((header, dict(zip(outputs, p)), algorithm, series[study], counts[study],
                     out / f"{header.SOPInstanceUID}.dcm"))
    workers = max(1, min(len(jobs), num_workers or min(8, os.cpu_count() or 1)))
    fork = workers > 1 and "fork" in multiprocessing.get_all_start_methods()
    with (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if fork else nullcontext()) as pool:
        done = (pool.map(_write_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))) if fork
                else map(_write_one, jobs))
        paths = list(tqdm(done, total=len(jobs), desc="structured reports", unit="report", disable=not progress))
    logger.info("wrote %d structured report(s) in %d series to %s", len(paths), len(series), out)
    return paths


def read_structured_report(path_or_dataset) -> dict[str, Any]:
    """What a report written here says: ``sop_uid`` (its own), ``study_uid``, ``source_sop_uid``,
    ``source_series_uid``, ``probabilities`` (``{finding: value}``, the exact values), ``algorithm``
    (``{"name", "version", "parameters"}``)."""
    import pydicom

    ds = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else pydicom.dcmread(path_or_dataset)
    probabilities, sources, algorithm = {}, set(), {}
    for group in _containers(ds):
        finding, value, group_algorithm = None, None, {}
        for item in group.ContentSequence:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "CODE" and name == "Finding":
                finding = item.ConceptCodeSequence[0].CodeMeaning
            elif item.ValueType == "IMAGE":
                sources.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            elif item.ValueType == "NUM":
                mv = item.MeasuredValueSequence[0]
                value = float(mv.FloatingPointValue) if "FloatingPointValue" in mv else float(mv.NumericValue)
            elif item.ValueType == "TEXT" and name in ("Algorithm Name", "Algorithm Version", "Algorithm Parameters"):
                key = {"Algorithm Name": "name", "Algorithm Version": "version"}.get(name)
                if key:
                    group_algorithm[key] = item.TextValue
                else:
                    group_algorithm.setdefault("parameters", []).append(item.TextValue)
        if finding is not None and value is not None:
            probabilities[finding] = value
        algorithm = algorithm or group_algorithm  # every group names the same model
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    return {"sop_uid": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID),
            "source_sop_uid": next(iter(sources)) if len(sources) == 1 else sorted(sources),
            "source_series_uid": str(evidence.SeriesInstanceUID), "probabilities": probabilities,
            "algorithm": algorithm}


def _containers(ds):
    """The measurement groups (CONTAINER items with a NUM child) of an SR, depth first."""
    for item in getattr(ds, "ContentSequence", []):
        if item.get("ValueType") == "CONTAINER":
            if any(c.get("ValueType") == "NUM" for c in getattr(item, "ContentSequence", [])):
                yield item
            else:
                yield from _containers(item)


def _is_deidentified(header) -> bool:
    return str(header.get("PatientIdentityRemoved", "")).upper() == "YES" or "DeidentificationMethod" in header


class StructuredReports:
    """Ignite handler of the inference bundle: when the run completes, one SR per image from the predictions
    :class:`~monai_cxrssl.evaluation.PredictionReport` wrote (attach it after that handler), into ``output_dir``,
    and stored (STOW-RS) to ``dicomweb_output`` when given.

    Checked when constructed, before inference starts: every image in ``data`` is a DICOM file with the UIDs a report
    references, the model has its weights, and the DICOMweb server answers with the credentials given
    (``CXRSSL_DICOMWEB_*`` or ``~/.netrc``, as for retrieval).

    Args:
        predictions: the :class:`~monai_cxrssl.evaluation.PredictionReport` of the run (its ``output_dir`` holds
            ``predictions.csv``).
        model_dir: the trained classifier (``models/`` with ``model_info.json`` and ``model.pt``).
        output_dir: where the reports are written.
        data: the inference items (``{"image": path, ...}``), checked up front.
        dicomweb_output: a DICOMweb root to store the reports to; empty: write them only.
        enabled: ``False``: attach nothing (the bundle's default, for PNG or JPEG inputs).
    """

    def __init__(self, predictions, model_dir, output_dir, data: Sequence[Mapping] = (), dicomweb_output: str = "",
                 enabled: bool = True):
        self.enabled = as_bool(enabled, "structured_reports")
        self.predictions, self.model_dir, self.output_dir = predictions, model_dir, Path(output_dir)
        self.dicomweb_output = str(dicomweb_output or "")
        self.paths: list[Path] = []
        self.stored = 0
        if not self.enabled:
            if self.dicomweb_output:
                raise DatalistError("dicomweb_output is set but structured_reports is false: nothing would be "
                                    "stored; leave structured_reports at its default")
            return
        model_algorithm(model_dir)
        deidentified = [item["image"] for item in data if _is_deidentified(_source_header(Path(item["image"])))]
        if deidentified and self.dicomweb_output:
            logger.warning("%d of the %d inputs are de-identified copies (e.g. %s): their reports carry the "
                           "pseudonymous patient and UIDs, which only an archive of those copies holds; %s should be "
                           "that archive, not the clinical one", len(deidentified), len(data), deidentified[0],
                           self.dicomweb_output)
        if self.dicomweb_output:
            from monai_cxrssl.data.dicomweb import check_server

            check_server(self.dicomweb_output)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from monai_cxrssl.evaluation.report import PREDICTIONS_CSV

        self.paths = write_structured_reports(Path(self.predictions.output_dir) / PREDICTIONS_CSV, self.model_dir,
                                              self.output_dir)
        if self.dicomweb_output:
            from monai_cxrssl.data.dicomweb import store_instances

            try:
                self.stored = store_instances(self.dicomweb_output, self.paths, progress=True)
            except DicomWebError:
                logger.error("the structured reports are kept in %s; store them again with the same server", self.output_dir)
                raise
