"""The tutorial notebooks: committed without outputs, and each executes top to bottom (nbclient) within its
time limit and shows what it promises (a checkpoint, a datalist, a table and plot, a comparison, a
multi-process run). Outputs go to a temporary folder through ``CXRSSL_TUTORIAL_OUT``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.paths import REPO_ROOT

TUTORIALS = REPO_ROOT / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
#: seconds per notebook (about 3-4x what each takes on a quiet 2-core CPU)
TIME_LIMIT = {"01_quickstart.ipynb": 420, "02_dicom_to_datalist.ipynb": 180, "03_label_efficiency.ipynb": 480,
              "04_methods_compared.ipynb": 600, "05_scale_out.ipynb": 300}


def test_the_five_notebooks_exist_and_are_committed_without_outputs():
    assert NOTEBOOKS == sorted(TIME_LIMIT), "every notebook needs a time limit here (and only notebooks that exist)"
    for name in NOTEBOOKS:
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip the outputs before committing"


def test_the_readme_links_the_notebooks_in_order():
    readme = (REPO_ROOT / "README.md").read_text()
    positions = [readme.find(f"tutorials/{name}") for name in NOTEBOOKS]
    assert all(p >= 0 for p in positions), "the README must link every notebook"
    assert positions == sorted(positions), "the README must list the notebooks in order"


def execute(name: str, out: Path, monkeypatch) -> tuple[nbformat.NotebookNode, str, set[str]]:
    """Run the notebook in a fresh kernel; return it executed, its text output, and the MIME types it showed."""
    monkeypatch.setenv("CXRSSL_TUTORIAL_OUT", str(out))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    t0 = time.monotonic()
    try:
        NotebookClient(nb, timeout=TIME_LIMIT[name], kernel_name="python3",
                       resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    finally:
        if os.environ.get("CXRSSL_KEEP_EXECUTED"):  # a folder to keep the executed notebooks in, for reading them
            nbformat.write(nb, Path(os.environ["CXRSSL_KEEP_EXECUTED"]) / name)
    elapsed = time.monotonic() - t0
    assert elapsed < TIME_LIMIT[name], f"{name} took {elapsed:.0f} s (limit {TIME_LIMIT[name]} s)"
    text, mime = [], set()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text.append(output.text)
            else:
                mime.update(output.get("data", {}))
                text.append(output.get("data", {}).get("text/plain", ""))
                text.append(output.get("data", {}).get("text/markdown", ""))
    return nb, "\n".join(text), mime


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT["01_quickstart.ipynb"] + 60)
def test_01_quickstart(tmp_path, monkeypatch):
    _, text, mime = execute("01_quickstart.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "01_quickstart"
    assert read_checkpoint(work / "simclr" / "checkpoint.pt")["epoch"] == 3  # 2 from Python + 1 resumed from the CLI
    assert "Epoch[3] Complete" in text
    metrics = json.loads((work / "finetune_1pct" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["ci_low"] <= metrics["auc"] <= metrics["ci_high"] <= 1.0
    assert f"test AUC {metrics['auc']:.3f} [95% CI {metrics['ci_low']:.3f}-{metrics['ci_high']:.3f}]" in text
    assert "image/png" in mime  # the loss curve


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT["02_dicom_to_datalist.ipynb"] + 60)
def test_02_dicom_to_datalist(tmp_path, monkeypatch, dicom_dir):
    _, text, mime = execute("02_dicom_to_datalist.ipynb", tmp_path, monkeypatch)
    datalist = json.loads((tmp_path / "02_dicom" / "dicom_datalist.json").read_text())
    n_real = len(list(dicom_dir.glob("*.dcm")))
    assert sum(len(datalist[k]) for k in ("training", "validation", "test")) == 24 + n_real  # 12 patients x 1-3 images
    patients = [{e["patient_id"] for e in datalist[k]} for k in ("training", "validation", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert "added the real DICOM files" in text
    assert "image/png" in mime  # before/after preprocessing


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT["03_label_efficiency.ipynb"] + 60)
def test_03_label_efficiency(tmp_path, monkeypatch):
    _, text, mime = execute("03_label_efficiency.ipynb", tmp_path, monkeypatch)
    results = json.loads((tmp_path / "03_label_efficiency" / "study" / "results.json").read_text())
    assert len(results["runs"]) == 2 * 2 * 2
    assert {(r["init"], r["mode"], r["fraction"]) for r in results["table"]} == {
        (i, m, f) for i in ("random", "simclr") for m in ("linear", "finetune") for f in (0.3, 1.0)}
    assert "| init | mode | fraction | labels (patients) |" in text and "Δ vs random" in text
    assert {"image/png", "text/markdown"} <= mime  # the plot and the table


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT["04_methods_compared.ipynb"] + 60)
def test_04_methods_compared(tmp_path, monkeypatch):
    _, text, mime = execute("04_methods_compared.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "04_methods"
    for method in ("simclr", "moco", "dino", "micle"):
        assert (work / method / "models" / "backbone.pt").is_file(), method
    results = json.loads((work / "probe" / "results.json").read_text())
    assert {r["init"] for r in results["table"]} == {"random", "simclr", "moco", "dino", "micle"}
    assert "are two different images of one patient" in text
    assert "image/png" in mime  # the MICLe pairs
    assert (work / "dino_from_outside" / "models" / "backbone.pt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT["05_scale_out.ipynb"] + 60)
def test_05_scale_out(tmp_path, monkeypatch):
    execute("05_scale_out.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "05_scale_out"
    two, one = (read_checkpoint(work / n / "checkpoint.pt") for n in ("two_processes", "one_process"))
    assert two["epoch"] == one["epoch"] == 2
    assert two["iteration"] == one["iteration"] > 0  # 2 x batch 8 = 1 x batch 16: the same number of steps
