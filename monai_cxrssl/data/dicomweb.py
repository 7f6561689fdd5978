"""Radiographs from a PACS or research archive over DICOMweb: find them (QIDO-RS), retrieve them (WADO-RS) into a
local cache, and write the datalist every bundle reads.

::

    python -m monai_cxrssl datalist dicomweb http://pacs.example.org/dicom-web -o datalist.json \\
        --cache-dir dicom_cache --modality CR DX --study-date 20200101-20201231

- **Find**: instances of the given modalities (CR and DX by default; ``any`` for all), narrowed by study date
  range, study or series UIDs, or accession numbers (one per line of a file). Instances that are not images
  (structured reports, presentation states, key objects, encapsulated documents) are skipped and counted.
- **Retrieve**: each instance (WADO-RS, its bytes as the archive stores them) into
  ``<cache-dir>/<study UID>/<series UID>/<SOP UID>.dcm``, in parallel threads with a progress bar, through the
  same session as the search (``dicomweb-client``). A file is written under a temporary name and renamed when complete,
  so an interrupted retrieval leaves no half-written file; a rerun fetches only what is not there yet.
- **Datalist**: one entry per image with ``image`` (the cached file), ``patient_id`` (PatientID), ``study_uid``,
  ``series_uid``, ``sop_uid`` and ``accession`` where the server gives one; unlabeled, in ``training``.
- **Credentials** come from the environment, never from the command line or the URL: ``CXRSSL_DICOMWEB_TOKEN``
  (a bearer token), or ``CXRSSL_DICOMWEB_USER`` and ``CXRSSL_DICOMWEB_PASSWORD`` (HTTP basic), or else a
  ``~/.netrc`` entry for the server's host (read by ``requests``). They are in no log, message or datalist.
- **Failures**: connection errors and 429/5xx answers are retried with exponential backoff (urllib3's ``Retry``),
  then fail with :class:`~monai_cxrssl.exceptions.DicomWebError` naming the server and the request.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from monai_cxrssl.exceptions import DatalistError, DicomWebError
from monai_cxrssl.utils import atomic_write, map_in_threads

__all__ = ["dicomweb_session", "find_instances", "retrieve_instances", "datalist_from_dicomweb", "check_server",
           "store_instances", "join_labels", "LABEL_KEYS", "NON_IMAGE_SOP_CLASS_PREFIXES"]

logger = logging.getLogger(__name__)

#: SOP classes that hold no image: structured reports and key objects (…88.*), presentation states (…11.*),
#: encapsulated documents (…104.*), raw data and spatial registrations (…66.*), waveforms (…9.*)
NON_IMAGE_SOP_CLASS_PREFIXES = tuple(f"1.2.840.10008.5.1.4.1.1.{k}." for k in ("88", "11", "104", "66", "9"))
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAGS = {"PatientID": "00100020", "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E",
         "SOPInstanceUID": "00080018", "SOPClassUID": "00080016", "AccessionNumber": "00080050",
         "Modality": "00080060", "StudyDate": "00080020"}


def _value(result: Mapping, keyword: str) -> str:
    """A string attribute of a QIDO-RS result (DICOM JSON), or ``""``."""
    values = (result.get(_TAGS[keyword]) or {}).get("Value") or [""]
    return str(values[0]).strip()


def _credentials() -> dict[str, Any]:
    token = os.environ.get("CXRSSL_DICOMWEB_TOKEN")
    if token:
        return {"headers": {"Authorization": f"Bearer {token}"}}
    user = os.environ.get("CXRSSL_DICOMWEB_USER")
    if user:
        return {"auth": (user, os.environ.get("CXRSSL_DICOMWEB_PASSWORD", ""))}
    return {}  # requests then takes the host's ~/.netrc entry, if any


def _server(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DicomWebError(f"'{url}' is not a DICOMweb URL: expected http(s)://host[:port]/path")
    if parts.username or parts.password:  # the message must not repeat them
        raise DicomWebError(f"the DICOMweb URL for {parts.hostname} holds credentials: give them through "
                            "CXRSSL_DICOMWEB_USER/CXRSSL_DICOMWEB_PASSWORD, CXRSSL_DICOMWEB_TOKEN or ~/.netrc instead")
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}".rstrip("/")


def dicomweb_session(url: str, retries: int = 3, backoff_s: float = 0.5, pool: int = 8):
    """A ``requests`` session for ``url``'s server: credentials from the environment (see the module docstring),
    connection errors and 429/5xx answers retried ``retries`` times with exponential backoff."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    _server(url)
    session = requests.Session()
    creds = _credentials()
    session.headers.update(creds.get("headers", {}))
    if "auth" in creds:
        session.auth = creds["auth"]
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff_s,
                  status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _client(url: str, session, timeout_s: float):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=_server(url), session=session, timeout=timeout_s)
    # the session retries (urllib3's Retry, with backoff); dicomweb-client's own retry would wait 2+4+8+16 s more
    # on any error, a refused connection included
    client.set_http_retry_params(retry=False)
    return client


def _failure(server: str, what: str, error: Exception) -> DicomWebError:
    """A clear error naming the server and the request (HTTP status and reason; no credentials: requests' messages
    hold the URL, which holds none)."""
    import requests

    response = getattr(error, "response", None)
    if response is not None and response.status_code in (401, 403):
        return DicomWebError(f"DICOMweb server {server} refused {what} (HTTP {response.status_code}): check the "
                             "credentials in CXRSSL_DICOMWEB_USER/CXRSSL_DICOMWEB_PASSWORD, CXRSSL_DICOMWEB_TOKEN or "
                             "~/.netrc")
    if response is not None:
        return DicomWebError(f"DICOMweb server {server} answered {what} with HTTP {response.status_code} "
                             f"{response.reason}")
    if isinstance(error, requests.exceptions.RequestException):
        reason = type(error).__name__
        inner = getattr(error.args[0], "reason", None) if error.args else None
        return DicomWebError(f"DICOMweb server {server} could not be reached for {what} ({reason}"
                             f"{f': {inner}' if inner else ''}), after retries")
    return DicomWebError(f"DICOMweb server {server}: {what} failed ({type(error).__name__}: {error})")


def find_instances(url: str, *, modalities: Sequence[str] = ("CR", "DX"), study_date: str | None = None,
                   study_uids: Sequence[str] = (), series_uids: Sequence[str] = (), accessions: Sequence[str] = (),
                   session=None, timeout_s: float = 60) -> tuple[list[dict], int]:
    """The image instances matching the filters (QIDO-RS), and how many non-image instances were left out.

    Args:
        url: the DICOMweb root, e.g. ``http://host:8042/dicom-web``.
        modalities: the modalities searched (one query each); empty or ``("any",)``: every modality.
        study_date: ``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD`` (either side may be empty).
        study_uids, series_uids, accessions: narrow the search to these (one query each).

    Returns:
        ``([{"patient_id", "study_uid", "series_uid", "sop_uid", "accession", "modality"}, ...], n_skipped)``,
        sorted by study, series and instance UID, each instance once.
    """
    server = _server(url)
    client = _client(url, session or dicomweb_session(url), timeout_s)
    mods = [m.upper() for m in modalities if m and m.lower() != "any"] or [None]
    if study_date is not None and not re.fullmatch(r"\d{8}|\d{8}-\d{0,8}|-\d{8}", study_date):
        raise DicomWebError(f"study date '{study_date}': expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    for uid in (*study_uids, *series_uids):
        if not _UID.match(uid):
            raise DicomWebError(f"'{uid}' is not a DICOM UID (digits and dots)")
    scopes = ([{"StudyInstanceUID": u} for u in study_uids] or [{}])
    scopes = [{**s, **({"SeriesInstanceUID": u} if u else {})} for s in scopes for u in (list(series_uids) or [None])]
    scopes = [{**s, **({"AccessionNumber": a} if a else {})} for s in scopes for a in (list(accessions) or [None])]
    found: dict[str, dict] = {}
    skipped: set[str] = set()
    for scope in scopes:
        for modality in mods:
            filters = {k: v for k, v in scope.items() if k != "StudyInstanceUID"}
            if modality:
                filters["Modality"] = modality
            if study_date:
                filters["StudyDate"] = study_date
            what = "the search for instances (QIDO-RS" + "".join(f", {k}={v}" for k, v in filters.items()) + ")"
            try:
                results = client.search_for_instances(
                    study_instance_uid=scope.get("StudyInstanceUID"), search_filters=filters, get_remaining=True,
                    fields=list(_TAGS))
            except Exception as e:  # requests' and dicomweb-client's errors alike
                raise _failure(server, what, e) from None
            for r in results:
                sop = _value(r, "SOPInstanceUID")
                study, series = _value(r, "StudyInstanceUID"), _value(r, "SeriesInstanceUID")
                if not all(_UID.match(u) for u in (study, series, sop)):
                    raise DicomWebError(f"DICOMweb server {server} returned an instance without valid study, series "
                                        f"and SOP instance UIDs ({study!r}, {series!r}, {sop!r})")
                if _value(r, "SOPClassUID").startswith(NON_IMAGE_SOP_CLASS_PREFIXES):
                    skipped.add(sop)
                    continue
                found[sop] = {"patient_id": _value(r, "PatientID"), "study_uid": study, "series_uid": series,
                              "sop_uid": sop, "accession": _value(r, "AccessionNumber"),
                              "modality": _value(r, "Modality")}
    instances = sorted(found.values(), key=lambda i: (i["study_uid"], i["series_uid"], i["sop_uid"]))
    return instances, len(skipped)


def _cached_path(cache_dir: Path, instance: Mapping) -> Path:
    return cache_dir / instance["study_uid"] / instance["series_uid"] / f"{instance['sop_uid']}.dcm"


def retrieve_instances(url: str, instances: Sequence[Mapping], cache_dir: str | os.PathLike, *, num_workers: int = 4,
                       progress: bool = True, session=None, timeout_s: float = 60,
                       deidentifier=None) -> tuple[list[Path], int]:
    """Each instance (WADO-RS) into ``cache_dir/<study>/<series>/<sop>.dcm``, unless it is there already.

    With a :class:`~monai_cxrssl.data.deidentify.Deidentifier`, each file is de-identified before it is written, and
    the path is made of the pseudonymous UIDs.

    Returns:
        ``(paths, n_fetched)``: the cached file of each instance, in order, and how many were fetched now.
    """
    server = _server(url)
    cache = Path(cache_dir)
    session = session or dicomweb_session(url, pool=max(1, num_workers))
    paths = [_cached_path(cache, deidentifier.pseudonyms(i) if deidentifier else i) for i in instances]
    todo = [(i, p) for i, p in zip(instances, paths) if not p.is_file()]
    logger.info("DICOMweb %s: %d instance(s), %d in the cache already, %d to retrieve", server, len(instances),
                len(instances) - len(todo), len(todo))

    def fetch(item) -> None:
        instance, path = item
        label = path.stem  # the instance as the cache names it: its pseudonym when de-identifying
        what = f"the retrieval of instance {label} (WADO-RS)"
        try:
            data = _retrieve_bytes(session, server, instance, timeout_s, label)
        except DicomWebError:
            raise
        except Exception as e:
            raise _failure(server, what, e) from None
        if deidentifier is not None:
            data = deidentifier.apply(data, source=f"instance {path.stem} from {server}")
        with atomic_write(path) as f:  # complete, or not there at all
            f.write(data)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"DICOMweb {urlsplit(server).hostname}", unit="inst",
               disable=not (progress and todo))
    # urllib3 logs requests and retries with their path, which holds the original UIDs: quiet when de-identifying
    quiet = [logging.getLogger(n) for n in ("urllib3", "urllib3.connectionpool", "urllib3.util.retry")]
    levels = [q.level for q in quiet]
    if deidentifier is not None:
        for q in quiet:
            q.setLevel(logging.ERROR)
    try:
        map_in_threads(fetch, todo, num_workers, lambda _: bar.update(1), name="dicomweb")
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
        bar.close()
    return paths, len(todo)


def _retrieve_bytes(session, server: str, instance: Mapping, timeout_s: float, label: str) -> bytes:
    """One instance as the server stores it (WADO-RS, any transfer syntax), the bytes of its one multipart part.

    Not ``dicomweb-client``'s ``retrieve_instance``: it re-parses each part with pydicom's strict reader, which
    refuses files stored without a File Meta header (they exist in archives, and Orthanc serves them as stored);
    the bytes are kept as they are, and the project's reader opens such files."""
    url = f"{server}/studies/{instance['study_uid']}/series/{instance['series_uid']}/instances/{instance['sop_uid']}"
    response = session.get(url, timeout=timeout_s,
                           headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    response.raise_for_status()
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith("application/dicom"):  # some servers send the part without its envelope
        return response.content
    if not content_type.startswith("multipart/related"):
        raise DicomWebError(f"DICOMweb server {server} answered the retrieval of instance {label} "
                            f"with '{content_type}', expected multipart/related DICOM")
    parts = _multipart_parts(content_type, response.content)
    if len(parts) != 1 or not parts[0]:
        raise DicomWebError(f"DICOMweb server {server} answered the retrieval of instance {label} with "
                            f"{len(parts)} part(s), expected one DICOM file")
    return parts[0]


def _multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a ``multipart/related`` message (binary parts, as DICOMweb sends them; the standard library's
    ``email`` parser takes twice as long as the request itself on a 130 KB radiograph)."""
    from email.message import Message

    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not boundary:
        return []
    parts = []
    for chunk in body.split(b"--" + str(boundary).encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        end = chunk.find(b"\r\n\r\n")
        if end < 0:
            continue
        payload = chunk[end + 4:]
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


def check_server(url: str, timeout_s: float = 30) -> None:
    """Ask the server for one study (QIDO-RS): it answers, and takes the credentials given; a
    :class:`~monai_cxrssl.exceptions.DicomWebError` naming the server otherwise. For checks before long work."""
    server = _server(url)
    try:
        _client(url, dicomweb_session(url, retries=1), timeout_s).search_for_studies(limit=1)
    except Exception as e:
        raise _failure(server, "a search for one study (QIDO-RS, checking the server before the run)", e) from None


def store_instances(url: str, paths: Sequence[str | os.PathLike], *, batch: int = 32, progress: bool = False,
                    session=None, timeout_s: float = 120) -> int:
    """Store DICOM files to a DICOMweb server (STOW-RS, ``batch`` files per request, through ``dicomweb-client``).

    Returns:
        how many instances the server stored.

    Raises:
        DicomWebError: the server cannot be reached, refuses the credentials, or refuses an instance (its SOP
            instance UID and the failure reason are named).
    """
    import pydicom
    from tqdm.auto import tqdm

    server = _server(url)
    client = _client(url, session or dicomweb_session(url), timeout_s)
    paths = [Path(p) for p in paths]
    stored = 0
    with tqdm(total=len(paths), desc=f"STOW-RS {urlsplit(server).hostname}", unit="inst",
              disable=not (progress and paths)) as bar:
        for start in range(0, len(paths), batch):
            datasets = []
            for p in paths[start:start + batch]:
                try:
                    datasets.append(pydicom.dcmread(p, force=True))
                except (OSError, ValueError, EOFError) as e:
                    raise DicomWebError(f"'{p}' could not be read for storage to {server} ({e})") from None
            what = f"the storage of {len(datasets)} instance(s) (STOW-RS)"
            try:
                response = client.store_instances(datasets)
            except Exception as e:
                raise _failure(server, what, e) from None
            failed = list(getattr(response, "FailedSOPSequence", []) or [])
            if failed:
                f = failed[0]
                raise DicomWebError(f"DICOMweb server {server} refused {len(failed)} of {len(datasets)} instance(s) "
                                    f"(STOW-RS), e.g. {f.get('ReferencedSOPInstanceUID', '?')} with failure reason "
                                    f"{f.get('FailureReason', '?')}")
            stored += len(datasets)
            bar.update(len(datasets))
    logger.info("DICOMweb %s: stored %d instance(s) (STOW-RS)", server, stored)
    return stored


#: the datalist fields a label table may be joined on (the CSV's column of the same name, unless ``key_col``)
LABEL_KEYS = ("accession", "study_uid", "series_uid", "sop_uid")


def join_labels(datalist: Mapping, csv_path: str | os.PathLike, *, key: str = "accession", key_col: str | None = None,
                label_col: str | None = None, labels_col: str | None = None, split_col: str | None = None,
                deidentify: str | os.PathLike | None = None, **csv_options) -> dict:
    """The datalist of the retrieved images that have labels in ``csv_path``, joined on ``key``.

    The table is read by :func:`~monai_cxrssl.data.datalist.datalist_from_csv` (the same columns, classes, multi-label
    findings, split column and errors), with ``key_col`` (default: ``key``) in place of the image column. A study-level
    key (accession, study UID) labels every image of the study. Images without a row are left out and counted
    (``dicomweb.n_unlabeled``, and a warning), as are rows that match no image.

    ``deidentify``: the mapping file of a de-identified retrieval: the table's keys (originals) are matched through
    it to the datalist's pseudonyms.

    Raises:
        DatalistError: ``key`` is not one of :data:`LABEL_KEYS`, a column is missing, a key appears twice in the
            table, or no retrieved image has a row.
    """
    from monai_cxrssl.data.datalist import SPLIT_KEYS, _make_datalist, datalist_from_csv

    if key not in LABEL_KEYS:
        raise DatalistError(f"labels are joined on one of {list(LABEL_KEYS)}, not '{key}'")
    if not (label_col or labels_col):
        raise DatalistError(f"{csv_path}: give the label column (label_col) or the findings column (labels_col)")
    table = datalist_from_csv(csv_path, image_col=key_col or key, label_col=label_col, labels_col=labels_col,
                              split_col=split_col, base_dir="/", check_files=False, **csv_options)
    rows: dict[str, tuple[str, dict]] = {}
    for split in SPLIT_KEYS:
        for row in table.get(split) or []:
            value = row["image"][1:]  # the key column, read as the image column below "/"
            if value in rows:
                raise DatalistError(f"{csv_path}: {key_col or key} '{value}' appears more than once")
            rows[value] = (split, {k: row[k] for k in ("label", "labels") if k in row})
    if deidentify:
        from monai_cxrssl.data.deidentify import Deidentifier

        to_pseudonym = {original: pseudonym for pseudonym, original in Deidentifier(deidentify).originals[key].items()}
        rows = {to_pseudonym.get(value, value): row for value, row in rows.items()}
    splits: dict[str, list] = {k: [] for k in SPLIT_KEYS}
    matched, unlabeled = set(), 0
    for entry in (e for split in SPLIT_KEYS for e in datalist.get(split) or []):
        found = rows.get(str(entry.get(key, "")))
        if found is None:
            unlabeled += 1
            continue
        matched.add(str(entry[key]))
        splits[found[0]].append({**entry, **found[1]})
    if not matched:
        raise DatalistError(f"{csv_path}: none of its {len(rows)} row(s) matches the {key} of a retrieved image")
    if unlabeled:
        logger.warning("%s: %d retrieved image(s) have no row (by %s) and are left out of the labelled datalist",
                       csv_path, unlabeled, key)
    if len(matched) < len(rows):
        logger.warning("%s: %d row(s) match no retrieved image (by %s)", csv_path, len(rows) - len(matched), key)
    out = _make_datalist(f"{datalist.get('description', 'DICOMweb')}, labels from {csv_path} by {key}", table["task"],
                         table.get("classes", []), splits)
    out["dicomweb"] = {**datalist.get("dicomweb", {}), "n_labelled": sum(len(v) for v in splits.values()),
                       "n_unlabeled": unlabeled}
    return out


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a text file (e.g. accession numbers), stripped."""
    p = Path(path)
    if not p.is_file():
        raise DatalistError(f"'{p}' does not exist: expected a text file with one value per line")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def datalist_from_dicomweb(url: str, cache_dir: str | os.PathLike, *, modalities: Iterable[str] = ("CR", "DX"),
                           study_date: str | None = None, study_uids: Sequence[str] = (),
                           series_uids: Sequence[str] = (), accessions: Sequence[str] = (), num_workers: int = 4,
                           progress: bool = True, retries: int = 3, timeout_s: float = 60,
                           deidentify: str | os.PathLike | None = None) -> dict:
    """Find the radiographs (:func:`find_instances`), retrieve them into ``cache_dir``
    (:func:`retrieve_instances`) and return the datalist of the images (see the module docstring).

    ``deidentify``: a mapping file (:mod:`monai_cxrssl.data.deidentify`): the cached copies are de-identified, the
    datalist holds the pseudonyms only, and the mapping file their originals (kept outside ``cache_dir``).

    Raises:
        DicomWebError: the server cannot be reached, refuses the credentials or answers an error (after retries).
        DatalistError: nothing matched, or no retrieved instance holds an image.
    """
    from monai_cxrssl.data.datalist import _make_datalist, _read_dicom_header

    server = _server(url)
    session = dicomweb_session(url, retries=retries, pool=max(1, int(num_workers)))
    instances, n_skipped = find_instances(url, modalities=list(modalities), study_date=study_date,
                                          study_uids=study_uids, series_uids=series_uids, accessions=accessions,
                                          session=session, timeout_s=timeout_s)
    if n_skipped:
        logger.warning("DICOMweb %s: skipped %d instance(s) that hold no image (structured reports, presentation "
                       "states, documents)", server, n_skipped)
    if not instances:
        raise DatalistError(f"DICOMweb server {server}: no image instance matches the search (modalities "
                            f"{list(modalities)}, study date {study_date}, {len(study_uids)} study UID(s), "
                            f"{len(series_uids)} series UID(s), {len(accessions)} accession(s))")
    deidentifier = None
    if deidentify:
        from monai_cxrssl.data.deidentify import Deidentifier

        deidentifier = Deidentifier(deidentify, cache_dir)
    try:
        paths, n_fetched = retrieve_instances(url, instances, cache_dir, num_workers=num_workers, progress=progress,
                                              session=session, timeout_s=timeout_s, deidentifier=deidentifier)
    finally:
        if deidentifier is not None:  # the originals of what was written, even after a failure
            deidentifier.save()
    if deidentifier is not None:
        instances = [deidentifier.pseudonyms(i) for i in instances]
    entries, not_images = [], 0
    for instance, path in zip(instances, paths):
        if _read_dicom_header(path) is None:  # an image SOP class the search could not tell apart, without pixels
            not_images += 1
            continue
        entry = {"image": str(path), "patient_id": instance["patient_id"] or instance["sop_uid"],
                 "study_uid": instance["study_uid"], "series_uid": instance["series_uid"],
                 "sop_uid": instance["sop_uid"]}
        if instance["accession"]:
            entry["accession"] = instance["accession"]
        entries.append(entry)
    if not_images:
        logger.warning("DICOMweb %s: skipped %d retrieved instance(s) without an image", server, not_images)
    if not entries:
        raise DatalistError(f"DICOMweb server {server}: none of the {len(instances)} retrieved instances holds an image")
    logger.info("DICOMweb %s: %d image(s) of %d patient(s); %d retrieved now, %d from the cache %s", server,
                len(entries), len({e["patient_id"] for e in entries}), n_fetched, len(instances) - n_fetched,
                cache_dir)
    datalist = _make_datalist(f"DICOMweb {server} (modalities {','.join(modalities) or 'any'})", "unlabeled", [],
                              {"training": entries})
    datalist["dicomweb"] = {"server": server, "n_images": len(entries), "n_skipped_not_images": n_skipped + not_images,
                            "n_retrieved": n_fetched, "n_from_cache": len(instances) - n_fetched,
                            "deidentified": deidentifier.method if deidentifier else None}
    return datalist
