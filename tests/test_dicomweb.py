"""Radiographs from a DICOMweb server (data/dicomweb.py), tested against a real Orthanc on 127.0.0.1
(``tests/orthanc.py``): find and retrieve into a datalist, filters, non-image instances skipped and counted, a
server that goes down mid-retrieval, wrong credentials, and pretraining from what was retrieved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from orthanc import Orthanc, archive
from runner import run_bundle, run_python

from monai_cxrssl.data.dicomweb import datalist_from_dicomweb, find_instances, read_lines, retrieve_instances
from monai_cxrssl.exceptions import DicomWebError

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def server(tmp_path_factory, dicom_dir):
    """One Orthanc holding the test archive (generated patients and studies, a structured report, the shared real
    DICOMs), for the module; stopped at its end."""
    folder = tmp_path_factory.mktemp("orthanc")
    files = archive(folder / "files", dicom_dir)
    with Orthanc(folder / "server") as orthanc:
        for f in files:
            orthanc.upload(f["path"])
        orthanc.files = files
        yield orthanc


def _env(monkeypatch, server):
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)


def test_the_command_finds_retrieves_and_writes_the_datalist_of_the_images(server, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "datalist.json"
    proc = run_python("-m", "monai_cxrssl", "datalist", "dicomweb", server.dicomweb, "--cache-dir", cache, "-o", out,
                      env=server.env)
    assert "DICOMweb 127.0.0.1" in proc.stderr  # the progress bar
    assert server.password not in proc.stdout + proc.stderr
    datalist = json.loads(out.read_text())
    entries = datalist["training"]
    images = [f for f in server.files if f["image"]]
    assert len(entries) == len(images) == 12  # 9 generated CR/DX + 3 real; the SR is no CR/DX instance
    for e in entries:
        path = out.parent / e["image"]
        assert path == cache / e["study_uid"] / e["series_uid"] / f"{e['sop_uid']}.dcm" and path.is_file()
        assert e["patient_id"]
    # the bytes as the archive holds them (JPEG, JPEG 2000, and a file without File Meta among them)
    sent = {f["path"].read_bytes() for f in images}
    assert {(out.parent / e["image"]).read_bytes() for e in entries} == sent
    assert {e["patient_id"] for e in entries} >= {"PAT0", "PAT1", "PAT2"}
    assert {e["accession"] for e in entries if e["patient_id"] == "PAT1"} == {"ACC10", "ACC11"}
    assert datalist["dicomweb"]["n_skipped_not_images"] == 0

    assert datalist["dicomweb"]["n_retrieved"] == 12 and datalist["dicomweb"]["n_from_cache"] == 0

    # every modality: the structured report is found, counted and left out; nothing is fetched twice
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.dcm")}
    again = run_python("-m", "monai_cxrssl", "datalist", "dicomweb", server.dicomweb, "--cache-dir", cache, "-o",
                       tmp_path / "any.json", "--modality", "any", "--no-progress", env=server.env)
    any_modality = json.loads((tmp_path / "any.json").read_text())
    assert len(any_modality["training"]) == 12 and any_modality["dicomweb"]["n_skipped_not_images"] == 1
    assert "skipped 1 instance(s) that hold no image" in again.stderr
    assert any_modality["dicomweb"]["n_retrieved"] == 0 and any_modality["dicomweb"]["n_from_cache"] == 12
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.dcm")} == stamps


def test_filters_narrow_the_search(server, tmp_path, monkeypatch):
    _env(monkeypatch, server)
    dx, _ = find_instances(server.dicomweb, modalities=["DX"])
    assert len(dx) == 2 and {i["patient_id"] for i in dx} == {"PAT2"} and {i["modality"] for i in dx} == {"DX"}
    in_2023, _ = find_instances(server.dicomweb, study_date="20230101-20231231")
    assert {i["accession"] for i in in_2023} == {"ACC00", "ACC10", "ACC20"}
    study = next(f["study_uid"] for f in server.files if f["accession"] == "ACC11")
    one_study, _ = find_instances(server.dicomweb, study_uids=[study])
    assert {i["study_uid"] for i in one_study} == {study} and len(one_study) == 1
    (tmp_path / "accessions.txt").write_text("ACC01\n\nACC21\n")
    by_accession = datalist_from_dicomweb(server.dicomweb, tmp_path / "cache", progress=False,
                                          accessions=read_lines(tmp_path / "accessions.txt"))["training"]
    assert sorted(e["accession"] for e in by_accession) == ["ACC01", "ACC01", "ACC21", "ACC21"]
    with pytest.raises(DicomWebError, match="study date"):
        find_instances(server.dicomweb, study_date="last week")
    with pytest.raises(DicomWebError, match="not a DICOM UID"):
        find_instances(server.dicomweb, study_uids=["../../etc"])


def test_wrong_or_misplaced_credentials_fail_clearly_and_never_show_the_password(server, tmp_path):
    wrong = {"CXRSSL_DICOMWEB_USER": server.user, "CXRSSL_DICOMWEB_PASSWORD": "not-the-password-xyz"}
    proc = run_python("-m", "monai_cxrssl", "datalist", "dicomweb", server.dicomweb, "--cache-dir", tmp_path / "c",
                      "-o", tmp_path / "d.json", env=wrong, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and f"DICOMweb server {server.dicomweb} refused" in text and "HTTP 401" in text
    assert "not-the-password-xyz" not in text and not (tmp_path / "d.json").exists()
    in_url = server.dicomweb.replace("http://", f"http://{server.user}:{server.password}@")
    proc = run_python("-m", "monai_cxrssl", "datalist", "dicomweb", in_url, "--cache-dir", tmp_path / "c", "-o",
                      tmp_path / "d.json", check=False)
    assert proc.returncode == 1 and "holds credentials" in proc.stdout + proc.stderr
    assert server.password not in proc.stdout + proc.stderr


def test_storing_with_wrong_credentials_fails_clearly(server, tmp_path, monkeypatch, dicom_dir):
    from monai_cxrssl.data.dicomweb import store_instances

    monkeypatch.setenv("CXRSSL_DICOMWEB_USER", server.user)
    monkeypatch.setenv("CXRSSL_DICOMWEB_PASSWORD", "not-the-password-xyz")
    with pytest.raises(DicomWebError, match=r"refused the storage of 1 instance\(s\) \(STOW-RS\) \(HTTP 401\)") as e:
        store_instances(server.dicomweb, sorted(dicom_dir.glob("*j2k.dcm")))
    assert "not-the-password-xyz" not in str(e.value)


def test_labels_are_joined_by_accession_or_uid_with_clear_errors(server, tmp_path, monkeypatch):
    from monai_cxrssl.data.dicomweb import join_labels
    from monai_cxrssl.exceptions import DatalistError

    _env(monkeypatch, server)
    datalist = datalist_from_dicomweb(server.dicomweb, tmp_path / "cache", progress=False)
    study = next(f for f in server.files if f["accession"] == "ACC10")["study_uid"]  # a study of 2 images
    (tmp_path / "by_study.csv").write_text(f"study_uid,findings,split\n{study},Effusion|Mass,test\n")
    joined = join_labels(datalist, tmp_path / "by_study.csv", key="study_uid", labels_col="findings",
                         split_col="split")
    assert joined["task"] == "multilabel" and joined["classes"] == ["Effusion", "Mass"] and not joined["training"]
    assert [e["labels"] for e in joined["test"]] == [[1, 1], [1, 1]] and joined["dicomweb"]["n_unlabeled"] == 10
    (tmp_path / "twice.csv").write_text("accession,label\nACC00,a\nACC00,b\n")
    with pytest.raises(DatalistError, match="accession 'ACC00' appears more than once"):
        join_labels(datalist, tmp_path / "twice.csv", label_col="label")
    (tmp_path / "other.csv").write_text("AccessionNumber,label\nACC00,a\n")
    with pytest.raises(DatalistError, match="column 'accession'.*not found; columns present: AccessionNumber, label"):
        join_labels(datalist, tmp_path / "other.csv", label_col="label")
    assert len(join_labels(datalist, tmp_path / "other.csv", key_col="AccessionNumber", label_col="label")
               ["training"]) == 1
    (tmp_path / "none.csv").write_text("accession,label\nACC99,a\n")
    with pytest.raises(DatalistError, match="none of its 1 row\\(s\\) matches the accession of a retrieved image"):
        join_labels(datalist, tmp_path / "none.csv", label_col="label")


def test_deidentified_copies_hold_pseudonyms_only_consistently_with_the_mapping_kept_apart(server, tmp_path):
    import stat

    import numpy as np
    import pydicom

    from monai_cxrssl.data.io import read_cxr

    cache, mapping = tmp_path / "cache", tmp_path / "secure" / "mapping.json"
    (tmp_path / "labels.csv").write_text("accession,finding\n" + "".join(
        f"ACC{p}{s},{['NORMAL', 'PNEUMONIA'][s]}\n" for p in range(3) for s in range(2)))
    args = ["-m", "monai_cxrssl", "datalist", "dicomweb", server.dicomweb, "--cache-dir", cache, "--deidentify",
            mapping]
    proc = run_python(*args, "-o", tmp_path / "dl.json", env=server.env)
    text = (tmp_path / "dl.json").read_text()
    datalist = json.loads(text)
    entries = datalist["training"]
    table = json.loads(mapping.read_text())
    assert len(entries) == 12 and datalist["dicomweb"]["deidentified"].startswith("dicognito")
    originals = {str(f["patient_id"]) for f in server.files if f["patient_id"]} | {
        f["study_uid"] for f in server.files if f["study_uid"]} | {f["accession"] for f in server.files if f["accession"]}
    source_of = {}  # original SOP instance UID -> the file sent to the server
    for f in server.files:
        ds = pydicom.dcmread(f["path"], stop_before_pixels=True, force=True)
        source_of[str(ds.SOPInstanceUID)] = f["path"]
        originals |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)} | ({str(ds.PatientID)} if ds.get("PatientID") else set())
    outputs = text + proc.stdout + proc.stderr + "\n".join(str(p) for p in cache.rglob("*"))
    assert not [o for o in originals if o in outputs]  # no original id in the datalist, the paths or the logs
    for e in entries:
        data = (tmp_path / e["image"]).read_bytes()
        assert not [o for o in originals if o.encode() in data]  # nor in the de-identified files
        ds = pydicom.dcmread(tmp_path / e["image"], force=True)
        assert (ds.PatientID if ds.get("PatientID") else e["sop_uid"]) == e["patient_id"]
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (e["study_uid"], e["series_uid"],
                                                                                  e["sop_uid"])
        assert ds.DeidentificationMethod.startswith("dicognito")
        source = source_of[table["originals"]["sop_uid"][e["sop_uid"]]]
        assert np.array_equal(read_cxr(tmp_path / e["image"]), read_cxr(source))  # the pixels untouched
    # one pseudonym per patient: the patient-level grouping is the original one
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    by_patient = {}
    for e in entries:
        by_patient.setdefault(table["originals"]["patient_id"].get(e["patient_id"], e["patient_id"]), set()).add(
            e["patient_id"])
    assert all(len(v) == 1 for v in by_patient.values()) and {"PAT0", "PAT1", "PAT2"} <= set(by_patient)
    # a rerun: the same pseudonyms, nothing fetched again; labels joined by the original accessions
    run_python(*args, "-o", tmp_path / "labelled.json", "--labels", tmp_path / "labels.csv", "--label-col", "finding",
               "--no-progress", env=server.env)
    labelled = json.loads((tmp_path / "labelled.json").read_text())
    assert labelled["dicomweb"]["n_from_cache"] == 12 and labelled["dicomweb"]["n_labelled"] == 9
    assert {e["sop_uid"] for e in labelled["training"]} <= {e["sop_uid"] for e in entries}
    for e in labelled["training"]:
        assert e["label"] == int(table["originals"]["accession"][e["accession"]][-1])
    inside = run_python(*args[:-1], cache / "mapping.json", "-o", tmp_path / "x.json", env=server.env, check=False)
    assert inside.returncode == 1 and "keep it apart from the de-identified copies" in inside.stderr


def test_a_server_down_mid_retrieval_fails_naming_it_and_a_rerun_fetches_only_the_rest(tmp_path, monkeypatch, caplog):
    with Orthanc(tmp_path / "server") as orthanc:
        for f in archive(tmp_path / "files"):
            orthanc.upload(f["path"])
        _env(monkeypatch, orthanc)
        instances, _ = find_instances(orthanc.dicomweb)
        first, _ = retrieve_instances(orthanc.dicomweb, instances[:3], tmp_path / "cache", progress=False)
        orthanc.stop()  # down, after 3 of the 9 images
        with pytest.raises(DicomWebError, match=f"DICOMweb server {orthanc.dicomweb} could not be reached for the "
                                                "retrieval of instance"):
            retrieve_instances(orthanc.dicomweb, instances, tmp_path / "cache", progress=False, num_workers=2)
        assert not list((tmp_path / "cache").rglob("*.tmp"))  # nothing half-written (atomic_write's temporaries)
        assert sorted((tmp_path / "cache").rglob("*.dcm")) == sorted(first)
        # de-identifying: the failure and urllib3's retry warnings name no original identifier
        from monai_cxrssl.data.deidentify import IDENTIFIERS, Deidentifier

        caplog.clear()  # the retrieval above named its instances: it was not de-identifying
        with caplog.at_level(logging.DEBUG, logger="urllib3"), pytest.raises(DicomWebError) as failed:
            retrieve_instances(orthanc.dicomweb, instances, tmp_path / "deid", progress=False,
                               deidentifier=Deidentifier(tmp_path / "mapping.json", tmp_path / "deid"))
        originals = {i[k] for i in instances for k in IDENTIFIERS if i.get(k)}
        assert "could not be reached" in str(failed.value)
        assert not [o for o in originals if o in str(failed.value) + caplog.text]
        caplog.clear()
        orthanc.start()  # back
        with caplog.at_level(logging.INFO, logger="monai_cxrssl.data.dicomweb"):
            datalist = datalist_from_dicomweb(orthanc.dicomweb, tmp_path / "cache", progress=False)
        assert len(datalist["training"]) == 9
        assert "9 instance(s), 3 in the cache already, 6 to retrieve" in caplog.text


@pytest.mark.slow
def test_from_the_pacs_and_back_pretrain_train_infer_and_store_structured_reports(server, tmp_path, monkeypatch):
    """The whole loop against Orthanc: retrieve (unlabelled) and pretrain one epoch; retrieve again with labels joined
    by accession and train a tiny classifier from that backbone; infer with ``--dicomweb_output``; then read the
    reports back from Orthanc: one per image, referencing its study, series and instance, holding the CSV's
    probabilities exactly and naming the model."""
    import csv

    import pydicom

    from monai_cxrssl.evaluation import read_structured_report

    cache = tmp_path / "cache"
    run_python("-m", "monai_cxrssl", "datalist", "dicomweb", server.dicomweb, "--cache-dir", cache,
               "-o", tmp_path / "datalist.json", "--no-progress", env=server.env)
    small = ["--image_size", "32", "--batch_size", "4", "--backbone", "resnet10", "--progress", "false",
             "--cache_workers", "1"]
    run_bundle(Path("bundles/simclr_cxr/configs/train.json"), tmp_path / "ssl", "--datalist", tmp_path / "datalist.json",
               "--epochs", "1", *small)
    assert (tmp_path / "ssl" / "models" / "backbone.pt").is_file()

    # labels by accession: each patient's first study NORMAL, second PNEUMONIA; the real DICOMs have no row
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["accession", "finding"])
        w.writerows([f"ACC{p}{s}", ["NORMAL", "PNEUMONIA"][s]] for p in range(3) for s in range(2))
    proc = run_python("-m", "monai_cxrssl", "datalist", "dicomweb", server.dicomweb, "--cache-dir", cache, "-o",
                      tmp_path / "labelled.json", "--no-progress", "--labels", tmp_path / "labels.csv",
                      "--label-col", "finding", env=server.env)
    labelled = json.loads((tmp_path / "labelled.json").read_text())
    assert labelled["classes"] == ["NORMAL", "PNEUMONIA"] and labelled["task"] == "binary"
    assert labelled["dicomweb"]["n_labelled"] == 9 and labelled["dicomweb"]["n_unlabeled"] == 3
    assert labelled["dicomweb"]["n_retrieved"] == 0  # all from the cache
    assert "3 retrieved image(s) have no row (by accession)" in proc.stderr
    for e in labelled["training"]:
        assert e["label"] == int(e["accession"][-1])

    run_bundle(Path("bundles/cxr_classifier/configs/train.json"), tmp_path / "clf", "--datalist",
               tmp_path / "labelled.json", "--init_weights", tmp_path / "ssl" / "models" / "backbone.pt", "--epochs", "1",
               *small)
    run_bundle(Path("bundles/cxr_classifier/configs/inference.json"), tmp_path / "clf", "--input",
               tmp_path / "datalist.json", "--datalist_split", "training", "--dicomweb_output", server.dicomweb,
               env=server.env)

    with open(tmp_path / "clf" / "inference" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    written = sorted((tmp_path / "clf" / "inference" / "sr").glob("*.dcm"))
    assert len(rows) == len(written) == 12
    # back from the server: its SR instances (QIDO-RS), retrieved (WADO-RS) and read
    from dicomweb_client.api import DICOMwebClient

    from monai_cxrssl.data.dicomweb import dicomweb_session, retrieve_instances

    _env(monkeypatch, server)
    session = dicomweb_session(server.dicomweb)
    found = DICOMwebClient(server.dicomweb, session=session).search_for_instances(search_filters={"Modality": "SR"})
    stored = [{"study_uid": r["0020000D"]["Value"][0], "series_uid": r["0020000E"]["Value"][0],
               "sop_uid": r["00080018"]["Value"][0]} for r in found]
    paths, _ = retrieve_instances(server.dicomweb, stored, tmp_path / "back", progress=False, session=session)
    reports = [read_structured_report(p) for p in paths if pydicom.dcmread(p).get("Manufacturer") == "monai_cxrssl"]
    assert len(reports) == 12  # the archive's own SR is no report of ours
    by_source = {r["source_sop_uid"]: r for r in reports}
    entries = {str((tmp_path / e["image"]).resolve()): e for e in json.loads((tmp_path / "datalist.json").read_text())["training"]}
    for row in rows:
        e = entries[str(Path(row["image"]).resolve())]
        r = by_source[e["sop_uid"]]
        assert r["study_uid"] == e["study_uid"] and r["source_series_uid"] == e["series_uid"]
        assert r["probabilities"] == {"PNEUMONIA": float(row["prob_PNEUMONIA"])}
        assert r["algorithm"]["name"].startswith("monai_cxrssl cxr_classifier resnet10")
        assert "n_labels=9" in r["algorithm"]["parameters"]



def test_the_retrieval_benchmark_runs_small(tmp_path):
    """``benchmarks/dicomweb_retrieval.py`` (the README's command, at 10 instances of 32 px): its own Orthanc, every
    instance retrieved with each worker count and de-identified, 4 reports written and stored, the table written."""
    import sys

    from monai_cxrssl.paths import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from dicomweb_retrieval import main
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    result = main(["--instances", "10", "--size", "32", "--reports", "4", "--out", str(tmp_path / "r.json")])
    assert [(r["workers"], r.get("deidentified", False)) for r in result["runs"]] == [(1, False), (4, False), (4, True)]
    assert all(r["instances_per_s"] > 0 for r in result["runs"])
    assert result["reports"]["reports"] == 4 and result["reports"]["store_ms_per_report"] > 0
    assert "instances/s" in (tmp_path / "r.md").read_text() and "Structured reports" in (tmp_path / "r.md").read_text()
