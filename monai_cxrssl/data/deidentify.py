"""De-identified local copies of retrieved radiographs, for research use, with the re-identification mapping kept
apart.

::

    python -m monai_cxrssl datalist dicomweb http://pacs:8042/dicom-web --cache-dir cache -o datalist.json \\
        --deidentify /secure/mapping.json

Each retrieved file is de-identified by ``dicognito`` before it is written: names replaced, identifiers
(PatientID, accession, study ID, ...) and every UID re-mapped, dates and times moved back by an offset of the patient's
own (intervals within a patient are kept), institution and address attributes replaced, insurance and contact
attributes removed, private attributes removed; ``PatientIdentityRemoved`` is set where the file says it has no
burned-in annotation. Pixels are not touched: text burned into an image stays there.

The pseudonyms are a keyed function of the original values and the patient (the key is a random secret made on the
first run), so one patient has one pseudonym in every file and every rerun: patient-level splits hold, and a rerun
finds its cache (a mapping file lost while its cache is kept is refused, not replaced by a new key).
The mapping file holds the key and the table of the originals of each pseudonym (patient, study, series, instance,
accession) for whoever may re-identify; it is written only outside the cache folder, readable by its owner alone, and
nothing else (datalist, cache paths, logs) holds an original identifier.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path

from monai_cxrssl.exceptions import DatalistError
from monai_cxrssl.utils import atomic_write

__all__ = ["Deidentifier", "IDENTIFIERS"]

#: the instance fields (QIDO-RS results, datalist entries) that are pseudonymised, with their DICOM keywords
IDENTIFIERS = {"patient_id": "PatientID", "study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
               "sop_uid": "SOPInstanceUID", "accession": "AccessionNumber"}


class Deidentifier:
    """De-identify DICOM files with one secret key, kept with the re-identification table in ``mapping_path``.

    Args:
        mapping_path: the mapping JSON: read if it exists (its key is reused), else made with a new random key.
        cache_dir: the folder of the de-identified copies; the mapping must not be inside it.
    """

    def __init__(self, mapping_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        import dicognito

        self.path = Path(mapping_path)
        if cache_dir is not None and self.path.resolve().is_relative_to(Path(cache_dir).resolve()):
            raise DatalistError(f"the de-identification mapping '{self.path}' is inside the cache '{cache_dir}': keep it "
                                "apart from the de-identified copies (it re-identifies them)")
        if self.path.is_file():
            try:
                state = json.loads(self.path.read_text())
                key, table = state["key"], state["originals"]
            except (ValueError, KeyError, TypeError) as e:
                raise DatalistError(f"'{self.path}' is not a de-identification mapping written by monai_cxrssl ({e})")
        else:
            if cache_dir is not None and next(Path(cache_dir).rglob("*.dcm"), None) is not None:
                raise DatalistError(f"the de-identification mapping '{self.path}' does not exist, but the cache "
                                    f"'{cache_dir}' holds files already: a new key would give their patients other "
                                    "pseudonyms. Give the mapping they were made with, or an empty cache")
            key, table = secrets.token_hex(16), {}
        self.key = str(key)
        self.originals: dict[str, dict[str, str]] = {f: dict(table.get(f, {})) for f in IDENTIFIERS}
        self.method = f"dicognito {dicognito.__version__}"
        self._lock = threading.Lock()
        self._pseudonyms: dict[tuple, dict[str, str]] = {}  # an instance's identifiers -> their pseudonyms

    def _anonymizer(self, patient_id: str):
        """dicognito keyed by the secret and the patient: its dates move by one offset per key, so a key per patient
        gives each patient an offset of their own (a known real date reveals no other patient's)."""
        from dicognito.anonymizer import Anonymizer

        return Anonymizer(seed=f"{self.key}:{patient_id}")

    def pseudonyms(self, instance: Mapping[str, str]) -> dict[str, str]:
        """``instance`` with its identifiers (:data:`IDENTIFIERS`) replaced by the pseudonyms its file will hold
        once de-identified (empty values stay empty); each is recorded in the table (and computed once)."""
        from pydicom.dataset import Dataset, FileMetaDataset

        key = tuple(str(instance.get(field) or "") for field in IDENTIFIERS)
        if key not in self._pseudonyms:
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            for (field, keyword), value in zip(IDENTIFIERS.items(), key):
                if value:
                    setattr(ds, keyword, value)
            self._anonymizer(str(instance.get("patient_id") or "")).anonymize(ds)
            pseudonyms = {field: str(ds.get(keyword, "")) for (field, keyword), value in zip(IDENTIFIERS.items(), key)
                          if value}
            with self._lock:
                for field, pseudonym in pseudonyms.items():
                    self.originals[field][pseudonym] = str(instance[field])
                self._pseudonyms[key] = pseudonyms
        return {**instance, **self._pseudonyms[key]}

    def apply(self, data: bytes, source: str = "") -> bytes:
        """The DICOM file ``data`` de-identified (its encoding and File Meta, or lack of it, kept)."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            raise DatalistError(f"{source or 'a retrieved file'} could not be read for de-identification ({e})") from None
        self._anonymizer(str(ds.get("PatientID", "") or "").strip()).anonymize(ds)
        ds.remove_private_tags()
        ds.DeidentificationMethod = self.method
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()

    def save(self) -> None:
        """Write the mapping (the key and the table), readable and writable by its owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.path.is_file():  # another run with the same mapping may have added pseudonyms since: keep them
                try:
                    saved = json.loads(self.path.read_text())
                except ValueError:
                    saved = {}
                if saved.get("key") == self.key:
                    for field in IDENTIFIERS:
                        self.originals[field] = {**saved.get("originals", {}).get(field, {}), **self.originals[field]}
            state = {"description": "monai_cxrssl de-identification mapping: the key of the pseudonyms and the "
                                    "original of each; keep it apart from the data, it re-identifies them",
                     "method": self.method, "key": self.key, "originals": self.originals}
        with atomic_write(self.path, "w", encoding="utf-8", permissions=0o600) as f:
            json.dump(state, f, indent=1)
