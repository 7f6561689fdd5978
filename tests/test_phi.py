"""Patient data: names, birth dates, accession numbers and institutions in DICOM headers never reach what the
project writes (logs, TensorBoard, CSV, JSON, checkpoints), through pretraining, classifier training and
inference on DICOM files."""

from pathlib import Path

import numpy as np
import pytest
import runner

from monai_cxrssl.paths import REPO_ROOT

PHI = {"PatientName": "Doe^Janet", "PatientBirthDate": "19580317", "AccessionNumber": "ACC7781234",
       "InstitutionName": "Saint Exemplar Hospital", "ReferringPhysicianName": "Smithers^Waylon",
       "OtherPatientIDs": "MRN-99120", "PatientAddress": "12 Quiet Lane"}
SMALL = ["--image_size", "32", "--batch_size", "4", "--backbone", "resnet10", "--progress", "false",
         "--cache_workers", "1"]


def _write(path: Path, patient: str, seed: int) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = patient, "CR"
    for k, v in PHI.items():
        setattr(ds, k, v)
    pixels = np.random.default_rng(seed).integers(0, 4096, (48, 40), dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@pytest.mark.slow
def test_no_phi_reaches_any_output(tmp_path):
    data = tmp_path / "dicom"
    for i in range(16):  # 8 patients, 2 images each, 2 classes; 2 patients in the test folder
        split = "test" if i >= 12 else "train"
        _write(data / split / ("normal", "pneumonia")[i % 2] / f"im{i:02d}.dcm", f"PAT{i // 2}", i)
    ssl, clf = tmp_path / "ssl", tmp_path / "clf"
    logs = [runner.run_bundle(REPO_ROOT / "bundles/simclr_cxr/configs/train.json", ssl, "--dataset_dir", data,
                              "--epochs", "1", *SMALL)]
    logs.append(runner.run_bundle(REPO_ROOT / "bundles/cxr_classifier/configs/train.json", clf, "--dataset_dir", data,
                                  "--init_weights", ssl / "models" / "backbone.pt", "--mode", "linear", *SMALL))
    logs.append(runner.run_bundle(REPO_ROOT / "bundles/cxr_classifier/configs/inference.json", clf, "--input", data))
    written = [p for p in tmp_path.rglob("*") if p.is_file() and data not in p.parents]
    assert any(p.suffix == ".csv" for p in written) and any("tfevents" in p.name for p in written)
    assert any(p.name == "checkpoint.pt" for p in written) and any(p.suffix == ".json" for p in written)
    texts = [(p, p.read_bytes()) for p in written] + [(f"log {i}", (r.stdout + r.stderr).encode())
                                                       for i, r in enumerate(logs)]
    for tag, value in PHI.items():
        for part in {value, *value.split("^")}:
            leaks = [str(where) for where, blob in texts if part.encode() in blob]
            assert not leaks, f"{tag} ({part!r}) found in {leaks}"
    # the patient ids are used (grouping, reports): PatientID is the one header identifier kept
    assert any(b"PAT3" in blob for _, blob in texts)
