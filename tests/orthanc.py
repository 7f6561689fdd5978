"""A real Orthanc DICOM server for the tests, on 127.0.0.1 only: Debian's ``orthanc`` and ``orthanc-dicomweb``
packages (installed by ``.ci/run``), started with a temporary configuration and storage, HTTP basic
authentication, no DICOM (DIMSE) port and remote access refused; stopped again by the test that started it.

    with Orthanc(tmp_path) as server:
        server.upload(path)                      # Orthanc's REST API
        server.dicomweb                          # http://127.0.0.1:<port>/dicom-web
        server.env                               # CXRSSL_DICOMWEB_USER / _PASSWORD for a command

Without Orthanc installed a test skips on a developer machine and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.isfile(p)),
                                            None)
    plugin = _plugin()
    if not found or not plugin:
        msg = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + "; under CI=true this is a failure, not a skip")
        pytest.skip(msg)
    return found


def _plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if os.path.isdir(folder) else []:
            return str(path)
    return None


class Orthanc:
    """One Orthanc process with its own configuration and storage under ``folder``; ``start()``/``stop()`` may
    alternate (the storage stays), as a server that goes down and comes back."""

    def __init__(self, folder: Path, user: str = "cxrssl"):
        from runner import free_port

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, "pw-" + secrets.token_hex(8)
        self.port = free_port()
        self.binary = orthanc_binary()
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cxrssl-tests", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"), "HttpPort": self.port, "DicomServerEnabled": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {user: self.password},
            "Plugins": [_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpTimeout": 10}))
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    @property
    def env(self) -> dict:
        return {"CXRSSL_DICOMWEB_USER": self.user, "CXRSSL_DICOMWEB_PASSWORD": self.password}

    def start(self) -> Orthanc:
        import requests

        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([self.binary, str(self.config)], cwd=self.folder, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc ended at start ({self.proc.returncode}): "
                                   f"{(self.folder / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.base}/system", auth=(self.user, self.password), timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def upload(self, path: Path) -> str:
        """Store one DICOM file (REST ``POST /instances``); returns Orthanc's id of it."""
        import requests

        r = requests.post(f"{self.base}/instances", data=Path(path).read_bytes(), auth=(self.user, self.password),
                          timeout=30)
        r.raise_for_status()
        return r.json()["ID"]

    def version(self) -> str:
        import requests

        return requests.get(f"{self.base}/system", auth=(self.user, self.password), timeout=10).json()["Version"]

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _save(ds, path: Path) -> Path:
    """``ds`` as a DICOM file (explicit VR little endian, with its File Meta) at ``path``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_cr(path: Path, patient: str, study: str, series: str, seed: int, modality: str = "CR",
             accession: str = "", study_date: str = "20240101", shape: tuple[int, int] = (64, 56)) -> Path:
    """A small CR/DX radiograph (16 bit, uncompressed, ``shape`` pixels) of the given patient, study and series."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1" if modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.Modality, ds.AccessionNumber, ds.StudyDate = patient, modality, accession, study_date
    pixels = np.random.default_rng(seed).integers(0, 4096, shape, dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    return _save(ds, path)


def write_sr(path: Path, patient: str, study: str) -> Path:
    """A basic text structured report in ``study``: a DICOM instance that holds no image."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.Modality, ds.StudyDate = patient, "SR", "20240101"
    return _save(ds, path)


def archive(folder: Path, shared_dicom: Path | None = None) -> list[dict]:
    """The test archive: 3 patients, each with 2 studies of 1-2 radiographs (9 CR and DX images, accession numbers, study
    dates in 2023 and 2024), a structured report in one study, and the shared real DICOMs when given. Returns one
    ``{"path", "patient_id", "study_uid", "accession", "image"}`` per file."""
    from pydicom.uid import generate_uid

    files = []
    for p in range(3):
        for s in range(2):
            study, series = generate_uid(), generate_uid()
            accession, date = f"ACC{p}{s}", f"202{3 + s}0{p + 1}15"
            for k in range(1 + (p + s) % 2):
                path = write_cr(folder / f"p{p}_s{s}_{k}.dcm", f"PAT{p}", study, series, seed=10 * p + 3 * s + k,
                                modality="DX" if (p, s) == (2, 1) else "CR", accession=accession, study_date=date)
                files.append({"path": path, "patient_id": f"PAT{p}", "study_uid": study, "accession": accession,
                              "image": True})
            if (p, s) == (0, 0):
                files.append({"path": write_sr(folder / "p0_s0_sr.dcm", "PAT0", study), "patient_id": "PAT0",
                              "study_uid": study, "accession": accession, "image": False})
    for path in sorted(shared_dicom.glob("*.dcm")) if shared_dicom else []:
        files.append({"path": path, "patient_id": None, "study_uid": None, "accession": None, "image": True})
    return files
