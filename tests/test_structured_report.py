"""The classifier's results as DICOM Structured Reports (evaluation/structured_report.py), on the shared real DICOMs
(MONOCHROME1/2, JPEG, JPEG 2000, one without File Meta): what a report references and holds, how they are written,
and the errors before a run. The round trip through a DICOMweb server is in tests/test_dicomweb.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest

from monai_cxrssl.evaluation import StructuredReports, read_structured_report, write_structured_reports
from monai_cxrssl.exceptions import DatalistError, DicomWebError

pytestmark = pytest.mark.shared_data


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A trained classifier's ``models/`` folder as far as the reports read it: ``model_info.json`` and weights."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "model_info.json").write_text(json.dumps({
        "task": "multilabel", "classes": ["Effusion", "Pneumothorax"], "mode": "linear",
        "backbone": {"name": "resnet18"}, "image_size": 64, "label_fraction": 0.1, "n_labels": 52,
        "n_patients": 40, "selection": "best validation val_auc",
        "init": {"method": "moco", "epoch": 3, "sha256": "ab" * 32}}))
    (models / "model.pt").write_bytes(b"weights")
    return models


def _predictions(path: Path, images: list[Path], probs: list[list[float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id", "prob_Effusion", "prob_Pneumothorax"])
        for image, p in zip(images, probs):
            w.writerow([str(image), "", *map(repr, p)])
    return path


@pytest.mark.parametrize("workers", [1, 2], ids=["in_process", "two_processes"])
def test_one_report_per_image_references_its_source_and_holds_the_exact_probabilities(dicom_dir, model_dir, tmp_path,
                                                                                      workers):
    images = sorted(dicom_dir.glob("*.dcm"))
    probs = [[1 / 3, 0.1234567890123456789], [0.0, 1.0], [2 / 7, 1e-9]]
    csv_path = _predictions(tmp_path / "inference" / "predictions.csv", images, probs)
    paths = write_structured_reports(csv_path, model_dir, tmp_path / "sr", num_workers=workers)
    assert len(paths) == 3 and not list((tmp_path / "sr").glob("*.tmp"))
    series = set()
    for image, p, path in zip(images, probs, paths):
        source = pydicom.dcmread(image, stop_before_pixels=True, force=True)
        sr = pydicom.dcmread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID,) and sr.SOPInstanceUID != source.SOPInstanceUID
        assert path.name == f"{source.SOPInstanceUID}.dcm"
        r = read_structured_report(path)
        assert r["source_sop_uid"] == source.SOPInstanceUID and r["source_series_uid"] == source.SeriesInstanceUID
        assert r["probabilities"] == {"Effusion": p[0], "Pneumothorax": p[1]}  # exact, as the CSV holds them
        assert r["algorithm"]["name"] == "monai_cxrssl cxr_classifier resnet18 linear"
        assert r["algorithm"]["version"].endswith("+" + __import__("hashlib").sha256(b"weights").hexdigest()[:12])
        assert "n_labels=52" in r["algorithm"]["parameters"] and "n_patients=40" in r["algorithm"]["parameters"]
        assert any(s.startswith("init=moco epoch=3 sha256=abababab") for s in r["algorithm"]["parameters"])
        series.add(sr.SeriesInstanceUID)
    assert len(series) == len({pydicom.dcmread(i, stop_before_pixels=True, force=True).StudyInstanceUID for i in images})


def test_reports_need_dicom_sources_and_say_so_before_anything_is_written(dicom_dir, model_dir, tmp_path):
    from PIL import Image

    png = tmp_path / "chest.png"
    Image.new("L", (8, 8)).save(png)
    images = [*sorted(dicom_dir.glob("*.dcm"))[:1], png]
    csv_path = _predictions(tmp_path / "predictions.csv", images, [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(DatalistError, match=f"'{png}' is not a DICOM image with SOPClassUID"):
        write_structured_reports(csv_path, model_dir, tmp_path / "sr")
    assert not list((tmp_path / "sr").glob("*.dcm")) if (tmp_path / "sr").exists() else True
    one = sorted(dicom_dir.glob("*.dcm"))[0]
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / one.name
    copy.write_bytes(one.read_bytes())
    twice = _predictions(tmp_path / "twice.csv", [one, copy], [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(DatalistError, match="are the same instance"):
        write_structured_reports(twice, model_dir, tmp_path / "sr")
    with pytest.raises(DatalistError, match="predictions.csv of an inference run"):
        write_structured_reports(tmp_path / "none.csv", model_dir, tmp_path / "sr")
    with pytest.raises(Exception, match="model_info.json' does not exist"):
        write_structured_reports(csv_path, tmp_path / "elsewhere", tmp_path / "sr")


def test_the_handler_checks_inputs_and_server_when_built_and_is_inert_when_off(dicom_dir, model_dir, tmp_path):
    from ignite.engine import Engine

    png = tmp_path / "chest.png"
    png.write_bytes(b"\x89PNG not really")
    off = StructuredReports(predictions=None, model_dir=tmp_path / "nowhere", output_dir=tmp_path / "sr",
                            data=[{"image": str(png)}], enabled=False)
    engine = Engine(lambda e, b: None)
    off.attach(engine)
    engine.run([0], max_epochs=1)
    assert not (tmp_path / "sr").exists()
    with pytest.raises(DatalistError, match="dicomweb_output is set but structured_reports is false"):
        StructuredReports(predictions=None, model_dir=model_dir, output_dir=tmp_path / "sr", enabled="false",
                          dicomweb_output="http://127.0.0.1:1/dicom-web")
    with pytest.raises(DatalistError, match="chest.png"):
        StructuredReports(predictions=None, model_dir=model_dir, output_dir=tmp_path / "sr", data=[{"image": str(png)}])
    dicoms = [{"image": str(p)} for p in sorted(dicom_dir.glob("*.dcm"))]
    from runner import free_port

    with pytest.raises(DicomWebError, match=r"DICOMweb server http://127.0.0.1:\d+/dicom-web could not be reached"):
        StructuredReports(predictions=None, model_dir=model_dir, output_dir=tmp_path / "sr", data=dicoms,
                          dicomweb_output=f"http://127.0.0.1:{free_port()}/dicom-web")
