"""The command line, run as ``python -m monai_cxrssl`` in a subprocess (and ``main()`` in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from monai_cxrssl.__main__ import build_parser, main
from monai_cxrssl.data.datalist import SPLIT_KEYS, load_datalist
from monai_cxrssl.data.splits import leakage_report


def run(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_cxrssl", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _read(path: Path) -> dict:
    return json.loads(path.read_text())  # valid JSON


def test_datalist_folders(kermany_dir, tmp_path):
    result = run("datalist", "folders", kermany_dir, "-o", "out/kermany.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training: 5216 (NORMAL 1341, PNEUMONIA 3875)" in result.stdout
    raw = _read(tmp_path / "out" / "kermany.json")
    assert raw["classes"] == ["NORMAL", "PNEUMONIA"] and raw["task"] == "binary"
    assert not raw["training"][0]["image"].startswith("/")  # relative to the file's folder
    loaded = load_datalist(tmp_path / "out" / "kermany.json", keys=("training", "test"))
    assert Path(loaded["training"][0]["image"]).is_file()
    assert Counter(e["label"] for e in loaded["test"]) == {0: 234, 1: 390}


def test_datalist_csv_split_and_leakage(nih_dir, tmp_path):
    result = run(
        "datalist", "csv", nih_dir / "labels.csv", "--labels-col", "finding_labels",
        "--patient-col", "patient_id", "--split-col", "split", "-o", "nih.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    raw = _read(tmp_path / "nih.json")
    assert raw["task"] == "multilabel" and len(raw["classes"]) == 14
    assert [len(raw[k]) for k in SPLIT_KEYS] == [600, 200, 200]

    result = run("leakage", "nih.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "30 of 264 patients" in result.stdout
    result = run("leakage", "nih.json", "--json", cwd=tmp_path)
    assert json.loads(result.stdout)["n_patients_leaking"] == 30
    assert run("leakage", "nih.json", "--fail-on-leak", cwd=tmp_path).returncode == 1

    result = run("split", "nih.json", "-o", "resplit.json", "--val", 0.1, "--test", 0.1, "--seed", 0, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resplit = _read(tmp_path / "resplit.json")
    assert sum(len(resplit[k]) for k in SPLIT_KEYS) == 1000
    assert resplit["classes"] == raw["classes"] and "re-split" in resplit["description"]
    assert leakage_report(resplit)["n_patients_leaking"] == 0
    result = run("leakage", "resplit.json", "--fail-on-leak", cwd=tmp_path)
    assert result.returncode == 0 and "no leakage" in result.stdout


def test_datalist_dicom_and_auto(dicom_dir, nih_dir, tmp_path):
    result = run("datalist", "dicom", dicom_dir, "-o", "dicom.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    raw = _read(tmp_path / "dicom.json")
    assert {e["patient_id"] for e in raw["training"]} == {
        "9RG1",
        "16d7f894-55d7-4d95-8957-d18987f0e981",
        "cr_chest_pa_mono1_10bit_nometa",
    }
    result = run("datalist", "auto", nih_dir, "-o", "auto.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _read(tmp_path / "auto.json")["task"] == "multilabel"


def test_errors(nih_dir, tmp_path):
    result = run("datalist", "csv", nih_dir / "labels.csv", "--label-col", "diagnosis", "-o", "x.json", cwd=tmp_path)
    assert result.returncode == 1
    assert "error:" in result.stderr and "columns present: image, split, binary_label" in result.stderr
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "empty").mkdir()
    result = run("datalist", "folders", "empty", "-o", "x.json", cwd=tmp_path)
    assert result.returncode == 1 and "no class folders" in result.stderr
    assert run(cwd=tmp_path).returncode == 2  # no command
    assert run("datalist", "folders", "empty", cwd=tmp_path).returncode == 2  # no -o


def test_main_in_process_and_registration(tmp_path, capsys):
    (tmp_path / "dl.json").write_text(json.dumps({"training": [{"image": "a.png", "patient_id": "p"}]}))
    assert main(["leakage", str(tmp_path / "dl.json")]) == 0
    assert "no leakage" in capsys.readouterr().out
    assert main(["leakage", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err

    def register_hello(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}"))

    parser = build_parser([register_hello, "monai_cxrssl.__main__:_register_leakage"])
    args = parser.parse_args(["hello", "--name", "cxr"])
    assert args.func(args) is None and capsys.readouterr().out == "hello cxr\n"
    assert parser.parse_args(["leakage", "x.json"]).command == "leakage"
    with pytest.raises(SystemExit):
        parser.parse_args(["datalist", "folders", "x", "-o", "y"])  # not registered there
