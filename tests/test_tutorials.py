"""The tutorial notebooks: committed without outputs, and each executes top to bottom (nbclient) within its
time limit and shows what it promises (a checkpoint, a datalist, a table and plot, a comparison, a
multi-process run). Outputs go to a temporary folder through ``CXRSSL_TUTORIAL_OUT``.

The notebooks run two at a time, each in its own kernel and folder (the ``executed`` fixture, longest
first); each test then checks its notebook's outputs, or reports that notebook's error."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
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


def execute(name: str, out: Path) -> tuple[nbformat.NotebookNode, str, set[str]]:
    """Run the notebook in a fresh kernel; return it executed, its text output, and the MIME types it showed."""
    env = {**os.environ, "CXRSSL_TUTORIAL_OUT": str(out), "PYTHONWARNINGS": "ignore",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    t0 = time.monotonic()
    try:
        NotebookClient(nb, timeout=TIME_LIMIT[name], kernel_name="python3",
                       resources={"metadata": {"path": str(TUTORIALS)}}).execute(env=env)
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


#: the whole set, two notebooks at a time: within the sum of the limits halved, plus slack
ALL_LIMIT = sum(TIME_LIMIT.values()) // 2 + 300


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    """``{name: (out folder, result or exception)}`` for every notebook, run two at a time, longest first."""
    outs = {name: tmp_path_factory.mktemp(name.split("_")[0]) for name in NOTEBOOKS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(execute, name, outs[name])
                   for name in sorted(NOTEBOOKS, key=TIME_LIMIT.get, reverse=True)}
        return {name: (outs[name], f.exception() or f.result()) for name, f in futures.items()}


def result(executed: dict, name: str) -> tuple[Path, str, set[str]]:
    """The notebook's output folder, text and MIME types; its own failure re-raised."""
    out, res = executed[name]
    if isinstance(res, BaseException):
        raise res
    return out, res[1], res[2]


@pytest.mark.slow
@pytest.mark.timeout(ALL_LIMIT)
def test_01_quickstart(executed):
    tmp_path, text, mime = result(executed, "01_quickstart.ipynb")
    work = tmp_path / "01_quickstart"
    assert read_checkpoint(work / "simclr" / "checkpoint.pt")["epoch"] == 3  # 2 from Python + 1 resumed from the CLI
    assert "Epoch[3] Complete" in text
    metrics = json.loads((work / "finetune_1pct" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["ci_low"] <= metrics["auc"] <= metrics["ci_high"] <= 1.0
    assert f"test AUC {metrics['auc']:.3f} [95% CI {metrics['ci_low']:.3f}-{metrics['ci_high']:.3f}]" in text
    assert "image/png" in mime  # the loss curve


@pytest.mark.slow
@pytest.mark.timeout(ALL_LIMIT)
def test_02_dicom_to_datalist(executed, dicom_dir):
    tmp_path, text, mime = result(executed, "02_dicom_to_datalist.ipynb")
    datalist = json.loads((tmp_path / "02_dicom" / "dicom_datalist.json").read_text())
    n_real = len(list(dicom_dir.glob("*.dcm")))
    assert sum(len(datalist[k]) for k in ("training", "validation", "test")) == 24 + n_real  # 12 patients x 1-3 images
    patients = [{e["patient_id"] for e in datalist[k]} for k in ("training", "validation", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert "added the real DICOM files" in text
    assert "image/png" in mime  # before/after preprocessing


@pytest.mark.slow
@pytest.mark.timeout(ALL_LIMIT)
def test_03_label_efficiency(executed):
    tmp_path, text, mime = result(executed, "03_label_efficiency.ipynb")
    results = json.loads((tmp_path / "03_label_efficiency" / "study" / "results.json").read_text())
    assert len(results["runs"]) == 2 * 2 * 2
    assert {(r["init"], r["mode"], r["fraction"]) for r in results["table"]} == {
        (i, m, f) for i in ("random", "simclr") for m in ("linear", "finetune") for f in (0.3, 1.0)}
    assert "| init | mode | fraction | labels (patients) |" in text and "Δ vs random" in text
    assert {"image/png", "text/markdown"} <= mime  # the plot and the table


@pytest.mark.slow
@pytest.mark.timeout(ALL_LIMIT)
def test_04_methods_compared(executed):
    tmp_path, text, mime = result(executed, "04_methods_compared.ipynb")
    work = tmp_path / "04_methods"
    for method in ("simclr", "moco", "dino", "micle"):
        assert (work / method / "models" / "backbone.pt").is_file(), method
    results = json.loads((work / "probe" / "results.json").read_text())
    assert {r["init"] for r in results["table"]} == {"random", "simclr", "moco", "dino", "micle"}
    assert "are two different images of one patient" in text
    assert "image/png" in mime  # the MICLe pairs
    assert (work / "dino_from_outside" / "models" / "backbone.pt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(ALL_LIMIT)
def test_05_scale_out(executed):
    tmp_path, _, _ = result(executed, "05_scale_out.ipynb")
    work = tmp_path / "05_scale_out"
    two, one = (read_checkpoint(work / n / "checkpoint.pt") for n in ("two_processes", "one_process"))
    assert two["epoch"] == one["epoch"] == 2
    assert two["iteration"] == one["iteration"] > 0  # 2 x batch 8 = 1 x batch 16: the same number of steps
