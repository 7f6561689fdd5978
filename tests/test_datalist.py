"""Datalist builders, loading/writing and checks, on the real data (fixtures) and generated cases."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from monai_cxrssl.data.datalist import (
    SPLIT_KEYS,
    build_datalist,
    check_datalist,
    datalist_from_class_folders,
    datalist_from_csv,
    datalist_from_dicom_folder,
    kermany_patient_id,
    load_datalist,
    write_datalist,
)
from monai_cxrssl.exceptions import DatalistError

NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------
# Kermany (real)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kermany(kermany_dir):
    return datalist_from_class_folders(kermany_dir)


def _label_counts(entries):
    return Counter(e["label"] for e in entries)


def test_kermany_counts_match_readme(kermany):
    assert kermany["classes"] == ["NORMAL", "PNEUMONIA"]
    assert kermany["task"] == "binary"
    assert _label_counts(kermany["training"]) == {0: 1341, 1: 3875}
    assert _label_counts(kermany["test"]) == {0: 234, 1: 390}
    assert kermany["validation"] == []
    check_datalist(kermany["training"] + kermany["test"], required_keys=("image", "label", "patient_id"))


def test_kermany_patient_ids(kermany):
    by_name = {Path(e["image"]).name: e["patient_id"] for e in kermany["training"]}
    assert by_name["person1000_bacteria_2931.jpeg"] == by_name["person1000_virus_1681.jpeg"] == "train/person1000"
    assert by_name["person447_virus_921_1.jpeg"] == "train/person447"
    assert by_name["IM-0115-0001.jpeg"] == "train/IM-0115"
    test_names = {Path(e["image"]).name: e["patient_id"] for e in kermany["test"]}
    assert test_names["NORMAL2-IM-0173-0001-0001.jpeg"] == test_names["NORMAL2-IM-0173-0001-0002.jpeg"]
    assert test_names["NORMAL2-IM-0173-0001-0001.jpeg"] == "test/NORMAL2-IM-0173"
    assert test_names["IM-0011-0001-0002.jpeg"] == "test/IM-0011"
    # person1 has images in both split folders: two different patients
    assert test_names["person1_virus_6.jpeg"] == "test/person1" != by_name["person1_bacteria_1.jpeg"]


def test_kermany_patient_counts(kermany):
    def patients(entries, label):
        return {e["patient_id"] for e in entries if e["label"] == label}

    pneumonia = patients(kermany["training"], 1) | patients(kermany["test"], 1)
    normal = patients(kermany["training"], 0) | patients(kermany["test"], 0)
    assert len(patients(kermany["training"], 1)) == 1635 and len(patients(kermany["test"], 1)) == 202
    assert len(patients(kermany["training"], 0)) == 1211 and len(patients(kermany["test"], 0)) == 225
    # patients are numbered per split folder: 1,837 split-qualified pneumonia patients. The
    # README's "1,667 patients" is the count of distinct person numbers, merging 170 numbers
    # that appear in both train and test (which the README itself says are not the same patients).
    assert len(pneumonia) == 1837
    numbers = {pid.split("/")[1] for pid in pneumonia}
    assert len(numbers) == 1667
    assert len(normal) == 1436
    assert not normal & pneumonia
    subtypes = Counter(Path(e["image"]).name.split("_")[1] for e in kermany["training"] + kermany["test"] if e["label"])
    assert subtypes == {"bacteria": 2772, "virus": 1493}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("NORMAL2-IM-0173-0001-0001.jpeg", "NORMAL2-IM-0173"),
        ("/some/dir/NORMAL2-IM-1018-0001.jpeg", "NORMAL2-IM-1018"),
        ("scan_42.png", "scan_42"),  # fallback: the file stem (own patient)
        ("brain.nii.gz", "brain"),
    ],
)
def test_kermany_patient_id(name, expected):
    assert kermany_patient_id(name) == expected


def test_build_datalist_detects_kermany(kermany_dir, kermany):
    assert build_datalist(kermany_dir) == kermany


# ----------------------------------------------------------------------------------------------
# NIH CSV (real)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nih(nih_dir):
    return datalist_from_csv(
        nih_dir / "labels.csv", labels_col="finding_labels", patient_col="patient_id", split_col="split"
    )


def test_nih_multilabel(nih, nih_dir):
    assert nih["task"] == "multilabel"
    assert nih["classes"] == NIH_FINDINGS
    assert [len(nih[k]) for k in SPLIT_KEYS] == [600, 200, 200]
    by_image = {Path(e["image"]).relative_to(nih_dir).as_posix(): e for k in SPLIT_KEYS for e in nih[k]}

    def findings(rel):
        return [c for c, v in zip(NIH_FINDINGS, by_image[rel]["labels"]) if v]

    # rows checked by hand against labels.csv
    assert findings("test/1_abnormal/00000176_002.png") == ["Atelectasis", "Cardiomegaly", "Fibrosis"]
    assert findings("test/1_abnormal/00000174_001.png") == ["Infiltration", "Nodule"]
    assert findings("test/0_normal/00000231_013.png") == []
    # the one image of a 0_normal folder with a finding: the CSV (not the folder) decides
    assert findings("valid/0_normal/00000193_019.png") == ["Pneumonia"]
    assert by_image["test/0_normal/00000231_013.png"]["patient_id"] == "231"

    # and every row, against an independent parse of the CSV
    with open(nih_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(by_image) == 1000
    for row in rows:
        expected = sorted(set(row["finding_labels"].split("|")) - {"No Finding"})
        assert findings(row["image"]) == expected, row
        assert by_image[row["image"]]["patient_id"] == row["patient_id"]
    assert len({e["patient_id"] for e in by_image.values()}) == 264


def test_nih_binary_label_column(nih_dir):
    d = datalist_from_csv(nih_dir / "labels.csv", label_col="binary_label", split_col="split")
    assert d["task"] == "binary" and d["classes"] == ["0_normal", "1_abnormal"]
    assert _label_counts(d["training"]) == {0: 300, 1: 300}
    assert "patient_id" not in d["training"][0]


def test_build_datalist_detects_nih(nih_dir, nih):
    assert build_datalist(nih_dir) == nih


# ----------------------------------------------------------------------------------------------
# DICOM (real and generated)
# ----------------------------------------------------------------------------------------------


def test_dicom_folder_real(dicom_dir, caplog):
    with caplog.at_level(logging.WARNING):
        d = datalist_from_dicom_folder(dicom_dir)
    assert d["task"] == "unlabeled" and d["validation"] == d["test"] == []
    by_name = {Path(e["image"]).name: e for e in d["training"]}
    assert set(by_name) == {
        "cr_chest_pa_mono1_j2k.dcm",
        "cr_chest_pa_mono1_10bit_nometa.dcm",
        "cr_chest_pa_mono2_jpeg_siim.dcm",
    }
    assert by_name["cr_chest_pa_mono1_j2k.dcm"]["patient_id"] == "9RG1"
    assert by_name["cr_chest_pa_mono2_jpeg_siim.dcm"]["patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981"
    # no PatientID in that header: the file stem, with a warning
    assert by_name["cr_chest_pa_mono1_10bit_nometa.dcm"]["patient_id"] == "cr_chest_pa_mono1_10bit_nometa"
    assert "has no PatientID" in caplog.text
    assert by_name["cr_chest_pa_mono1_j2k.dcm"]["study_id"] == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    assert by_name["cr_chest_pa_mono1_10bit_nometa.dcm"]["study_id"] == "1.2.392.200036.9125.0.199302241758.16"
    assert build_datalist(dicom_dir) == d


def _write_dicom(path: Path, patient_id: str | None, meta: bool = True) -> Path:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    if meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    return path


def test_class_folders_of_dicom_files_take_the_patient_from_the_header(tmp_path):
    # 18 files of 2 patients, in train and test split folders: 2 patients, and the leakage is seen
    from monai_cxrssl.data.splits import leakage_report

    for i in range(18):
        split, cls = ("train", "test")[i % 2], ("normal", "pneumonia")[(i // 2) % 2]
        _write_dicom(tmp_path / split / cls / f"img{i:02d}.dcm", f"PAT{i % 3 == 0}")
    _touch(tmp_path / "train" / "normal" / "person7_bacteria_1.jpeg")  # not DICOM: the file-name rule
    d = datalist_from_class_folders(tmp_path)
    entries = d["training"] + d["test"]
    assert {e["patient_id"] for e in entries if e["image"].endswith(".dcm")} == {"PATTrue", "PATFalse"}
    assert next(e for e in d["training"] if e["image"].endswith(".jpeg"))["patient_id"] == "train/person7"
    assert all(e["study_id"] == "1.2.3.4" for e in entries if e["image"].endswith(".dcm"))
    report = leakage_report(d)
    assert report["n_patients_leaking"] == 2 and set(report["patients"]) == {"PATTrue", "PATFalse"}


def test_dicom_folder_generated(tmp_path):
    _write_dicom(tmp_path / "a.dcm", "P1")
    _write_dicom(tmp_path / "IM0001", "P2", meta=False)  # no meta header, no .dcm ending
    _write_dicom(tmp_path / "P3" / "study" / "IMG.DCM", "P3")  # nested, upper-case ending
    _touch(tmp_path / "notes.txt", b"not a dicom")
    _touch(tmp_path / "blob", bytes(range(256)) * 4)  # binary garbage, no ending
    _touch(tmp_path / ".hidden.dcm", b"x")
    d = datalist_from_dicom_folder(tmp_path)
    got = {Path(e["image"]).relative_to(tmp_path).as_posix(): e["patient_id"] for e in d["training"]}
    assert got == {"a.dcm": "P1", "IM0001": "P2", "P3/study/IMG.DCM": "P3"}
    assert all(e["study_id"] == "1.2.3.4" for e in d["training"])
    flat = datalist_from_dicom_folder(tmp_path, recursive=False)
    assert len(flat["training"]) == 2


def test_dicom_folder_errors(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        datalist_from_dicom_folder(tmp_path / "nope")
    with pytest.raises(DatalistError, match="no DICOM images"):
        datalist_from_dicom_folder(tmp_path)
    _touch(tmp_path / "bad.dcm", b"hello, this is text and no DICOM header")
    with pytest.raises(DatalistError, match="no DICOM images"):
        datalist_from_dicom_folder(tmp_path)


# ----------------------------------------------------------------------------------------------
# class folders (generated)
# ----------------------------------------------------------------------------------------------


def test_class_folders_flat(tmp_path):
    for cls, n in (("dog", 2), ("cat", 3), ("bird", 1)):
        for i in range(n):
            _touch(tmp_path / cls / f"{cls}{i}.png")
    _touch(tmp_path / "cat" / "sub" / "deep.JPG")  # nested, upper-case ending
    _touch(tmp_path / "cat" / "readme.txt")  # not an image
    _touch(tmp_path / "cat" / ".DS_Store")
    _touch(tmp_path / "loose.png")  # not in a class folder: ignored
    d = datalist_from_class_folders(tmp_path)
    assert d["classes"] == ["bird", "cat", "dog"] and d["task"] == "multiclass"
    assert _label_counts(d["training"]) == {0: 1, 1: 4, 2: 2}
    assert d["validation"] == d["test"] == []
    # fallback patient id: the file stem, without a split prefix
    assert {e["patient_id"] for e in d["training"] if e["label"] == 2} == {"dog0", "dog1"}


def test_class_folders_splits(tmp_path):
    _touch(tmp_path / "Train" / "b" / "1.png")
    _touch(tmp_path / "Train" / "a" / "2.png")
    _touch(tmp_path / "val" / "b" / "3.png")  # class "a" absent from val: indices still shared
    _touch(tmp_path / "test" / "c" / "4.png")
    d = datalist_from_class_folders(tmp_path, patient_id_fn=lambda p: "p" + p.stem)
    assert d["classes"] == ["a", "b", "c"]
    assert [(e["label"], e["patient_id"]) for e in d["training"]] == [(0, "Train/p2"), (1, "Train/p1")]
    assert [(e["label"], e["patient_id"]) for e in d["validation"]] == [(1, "val/p3")]
    assert [e["label"] for e in d["test"]] == [2]


def test_class_folders_errors(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        datalist_from_class_folders(tmp_path / "missing")
    with pytest.raises(DatalistError, match=r"no class folders .*root/<class>/<images>"):
        datalist_from_class_folders(tmp_path)  # empty folder
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(DatalistError, match="hold no image files"):
        datalist_from_class_folders(tmp_path)
    _touch(tmp_path / "train" / "NORMAL" / "x.png")
    with pytest.raises(DatalistError, match=r"mixes split folders \['train'\] with other folders \['NORMAL'\]"):
        datalist_from_class_folders(tmp_path)
    with pytest.raises(DatalistError, match=r"hold no image files with endings \['.bmp'\]"):
        datalist_from_class_folders(tmp_path / "train", extensions=("bmp",))


# ----------------------------------------------------------------------------------------------
# CSV (generated)
# ----------------------------------------------------------------------------------------------


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def images(tmp_path):
    return [_touch(tmp_path / "img" / f"{i}.png") for i in range(4)]


def test_csv_single_label(tmp_path, images):
    csv_path = _write_csv(
        tmp_path / "t.csv",
        ["path", "y", "pid", "fold"],
        [["img/0.png", "10", "a", "train"], ["img/1.png", "2", "a", "TRAIN"], [str(images[2]), "2", "", "Valid"]],
    )
    d = datalist_from_csv(csv_path, image_col="path", label_col="y", patient_col="pid", split_col="fold")
    assert d["classes"] == ["2", "10"]  # numeric order
    assert [e["label"] for e in d["training"]] == [1, 0]
    assert d["training"][0]["image"] == str(images[0])  # relative to the CSV's folder
    assert d["validation"] == [{"image": str(images[2]), "label": 0}]  # empty patient: no patient_id
    unlabeled = datalist_from_csv(csv_path, image_col="path")
    assert unlabeled["task"] == "unlabeled" and len(unlabeled["training"]) == 3
    moved = datalist_from_csv(tmp_path / "t.csv", image_col="path", base_dir=tmp_path / "nowhere", check_files=False)
    assert moved["training"][0]["image"] == str(tmp_path / "nowhere" / "img" / "0.png")


def test_csv_multilabel_explicit_classes(tmp_path, images):
    csv_path = _write_csv(
        tmp_path / "t.csv", ["image", "f"], [["img/0.png", "B;A"], ["img/1.png", "none"], ["img/2.png", "C"]]
    )
    d = datalist_from_csv(csv_path, labels_col="f", labels_sep=";", no_finding="none", classes=["C", "B", "A"])
    assert [e["labels"] for e in d["training"]] == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(DatalistError, match=r"line 4: 'C' is not among the classes \['A', 'B'\]"):
        datalist_from_csv(csv_path, labels_col="f", labels_sep=";", no_finding="none", classes=["A", "B"])


def test_csv_errors(tmp_path, images):
    csv_path = _write_csv(tmp_path / "t.csv", ["image", "label", "split"], [["img/0.png", "a", "train"]])
    with pytest.raises(DatalistError, match="does not exist"):
        datalist_from_csv(tmp_path / "missing.csv")
    with pytest.raises(DatalistError) as err:
        datalist_from_csv(csv_path, label_col="diagnosis")
    assert "t.csv" in str(err.value) and "'diagnosis'" in str(err.value)
    assert "columns present: image, label, split" in str(err.value)
    with pytest.raises(DatalistError, match="not both"):
        datalist_from_csv(csv_path, label_col="label", labels_col="label")

    bad = _write_csv(tmp_path / "b.csv", ["image", "label", "split"], [["img/0.png", "a", "train"], ["", "b", "train"]])
    with pytest.raises(DatalistError, match=r"b.csv, line 3: empty 'image' cell"):
        datalist_from_csv(bad, label_col="label")
    bad = _write_csv(tmp_path / "s.csv", ["image", "split"], [["img/0.png", "holdout"]])
    with pytest.raises(DatalistError, match=r"line 2: split 'holdout' in column 'split' is not one of"):
        datalist_from_csv(bad, split_col="split")
    bad = _write_csv(tmp_path / "m.csv", ["image"], [["img/0.png"], ["img/missing.png"]])
    with pytest.raises(DatalistError, match=r"entry 1: image file '.*missing.png' does not exist"):
        datalist_from_csv(bad)
    bad = _write_csv(tmp_path / "e.csv", ["image"], [])
    with pytest.raises(DatalistError, match="no rows"):
        datalist_from_csv(bad)
    (tmp_path / "z.csv").write_text("")
    with pytest.raises(DatalistError, match="is empty"):
        datalist_from_csv(tmp_path / "z.csv")


# ----------------------------------------------------------------------------------------------
# check_datalist
# ----------------------------------------------------------------------------------------------


def test_check_datalist(tmp_path, images):
    items = [{"image": str(p), "label": 0} for p in images]
    assert check_datalist(items) is items
    with pytest.raises(DatalistError, match=r"dl.json 'training' is empty"):
        check_datalist([], source="dl.json 'training'")
    with pytest.raises(DatalistError, match=r"entry 1 has no 'label' key .*entry: \{'image'"):
        check_datalist([items[0], {"image": str(images[1])}], required_keys=("image", "label"))
    with pytest.raises(DatalistError, match="entry 0 is a str"):
        check_datalist(["a.png"])
    with pytest.raises(DatalistError, match="must be a list"):
        check_datalist({"image": "a.png"})
    with pytest.raises(DatalistError, match=r"entry 2: image file '/nope/x.png' does not exist"):
        check_datalist(items[:2] + [{"image": "/nope/x.png"}])
    many = items + [{"image": f"/nope/{i}.png"} for i in range(8)]
    with pytest.raises(DatalistError, match=r"8 of 12 entries .*entry 4: '/nope/0.png'.*and 3 more"):
        check_datalist(many)
    check_datalist(many, check_files=False)
    multi_view = [{"image": [str(images[0]), "/nope/lateral.png"]}]
    with pytest.raises(DatalistError, match="lateral.png"):
        check_datalist(multi_view)


# ----------------------------------------------------------------------------------------------
# write / load
# ----------------------------------------------------------------------------------------------


def test_write_load_round_trip(tmp_path, images):
    (tmp_path / "out" / "train").mkdir(parents=True)  # "train/p1" exists next to the JSON file
    datalist = {
        "description": "demo",
        "task": "binary",
        "classes": ["a", "b"],
        "training": [{"image": str(images[0]), "label": np.int64(1), "patient_id": "train"}],
        "validation": [{"image": str(images[1]), "label": 0, "patient_id": "p2", "study_id": "s"}],
        "test": [],
    }
    path = write_datalist(datalist, tmp_path / "out" / "dl.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["dl.json", "train"]  # no temporary file left
    raw = json.loads(path.read_text())
    assert raw["training"][0]["image"] == "../img/0.png"
    assert list(raw)[:3] == ["description", "task", "classes"]

    loaded = load_datalist(path, keys=None)
    assert loaded["training"] == [{"image": str(images[0]), "label": 1, "patient_id": "train"}]
    assert loaded["validation"][0]["image"] == str(images[1])
    assert loaded["classes"] == ["a", "b"] and loaded["task"] == "binary"
    assert loaded["test"] == []
    only_training = load_datalist(path)
    assert "validation" not in only_training and only_training["description"] == "demo"
    elsewhere = load_datalist(path, keys="validation", base_dir="/data")
    assert elsewhere["validation"][0]["image"] == "/img/1.png"  # "../img/1.png" from /data

    absolute = write_datalist(datalist, tmp_path / "abs.json", relative=False)
    assert json.loads(absolute.read_text())["training"][0]["image"] == str(images[0])


def test_load_datalist_errors(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        load_datalist(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_datalist(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DatalistError, match="must hold a JSON object"):
        load_datalist(tmp_path / "list.json")
    (tmp_path / "dl.json").write_text(json.dumps({"training": [{"image": "a.png"}], "test": ["b.png"]}))
    with pytest.raises(DatalistError, match=r"no 'validation' key; keys present: \['training', 'test'\]"):
        load_datalist(tmp_path / "dl.json", keys=("training", "validation"))
    d = load_datalist(tmp_path / "dl.json", keys=("test",))  # decathlon-style test list
    assert d["test"] == [{"image": str(tmp_path / "b.png")}]
    (tmp_path / "nokey.json").write_text(json.dumps({"training": [{"label": 1}]}))
    with pytest.raises(DatalistError, match=r"nokey.json 'training': entry 0 has no 'image'"):
        load_datalist(tmp_path / "nokey.json")
    with pytest.raises(DatalistError, match="no list of entries"):
        write_datalist({"description": "x"}, tmp_path / "w.json")


def test_build_datalist_layouts(tmp_path, images):
    write_datalist({"training": [{"image": str(images[0])}]}, tmp_path / "datalist.json")
    assert build_datalist(tmp_path)["training"] == [{"image": str(images[0])}]
    assert build_datalist(tmp_path / "datalist.json")["training"] == [{"image": str(images[0])}]

    other = tmp_path / "other"
    other.mkdir()
    _touch(other / "notes.txt")
    with pytest.raises(DatalistError, match="cannot tell the layout.*datalist.json.*labels.csv.*DICOM"):
        build_datalist(other)
    with pytest.raises(DatalistError, match="does not exist"):
        build_datalist(tmp_path / "missing")
