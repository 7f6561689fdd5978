"""Shared fixtures.

``shared_data`` gives the folder of real radiographs (``$CXRSSL_SHARED_DATA`` or ``../shared/data``).
When it is missing, tests that need it skip on a developer machine but FAIL under ``CI=true``:
CI must never pass by skipping the real-data tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from monai_cxrssl.paths import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    """A cache of generated demo sets (``monai_cxrssl.data.phantoms.demo_cache_dir``) of this session's own,
    inherited by every subprocess: each session generates the set once, as a fresh machine does, then copies it."""
    if "CXRSSL_CACHE_DIR" not in os.environ:
        os.environ["CXRSSL_CACHE_DIR"] = config._cxrssl_cache = tempfile.mkdtemp(prefix="cxrssl-test-cache-")


def pytest_unconfigure(config):
    if getattr(config, "_cxrssl_cache", None):
        shutil.rmtree(config._cxrssl_cache, ignore_errors=True)
        os.environ.pop("CXRSSL_CACHE_DIR", None)


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"real data not found at {path} (set CXRSSL_SHARED_DATA)"
        if IN_CI:
            pytest.fail(msg + "; under CI=true this is a failure, not a skip")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(shared_data_dir())


@pytest.fixture(scope="session")
def kermany_dir(shared_data) -> Path:
    return _require(shared_data / "kermany_pneumonia_224")


@pytest.fixture(scope="session")
def nih_dir(shared_data) -> Path:
    return _require(shared_data / "nih_cxr14_1000_64")


@pytest.fixture(scope="session")
def dicom_dir(shared_data) -> Path:
    return _require(shared_data / "dicom")


# ------------------------------------------------------------------ several processes
@pytest.fixture(scope="session")
def two_process_steps(tmp_path_factory) -> Path:
    """One step of each SSL method (``tests/dist_step.py``) with 2 processes of batch 4 under ``torchrun``, on 2
    nodes of one process simulated here (torchrun's c10d rendezvous on loopback), all in one launch:
    ``<folder>/<method>.pt`` as rank 0 wrote them, and ``<method>_vit.pt`` on a ViT for the methods whose bundle
    trains one by default."""
    from runner import torchrun_nodes
    from small_methods import METHODS, default_backbone

    out = tmp_path_factory.mktemp("two_processes")
    specs = [*METHODS, *(f"{m}:vit" for m in METHODS if default_backbone(m).startswith("vit"))]
    here = Path(__file__).parent
    torchrun_nodes(2, 1, here / "dist_step.py", ",".join(specs), 8, out, cwd=here,
                   node_env=[{"PYTHONPATH": str(here)}] * 2)
    return out


# ------------------------------------------------------------------ the documented commands, in the background
def _is_docs_test(item) -> bool:
    return item.path.name == "test_docs.py" and "runs" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items):
    """``tests/test_docs.py``'s command tests last: their commands run in the background meanwhile."""
    items[:] = [i for i in items if not _is_docs_test(i)] + [i for i in items if _is_docs_test(i)]


@pytest.fixture(scope="session", autouse=True)
def _documented_commands_in_the_background(request, tmp_path_factory):
    """Start every documented command (``tests/test_docs.py``, ~25 minutes of subprocesses on one core)
    at the beginning of the session, beside the other tests, which leave a core idle much of the time.
    Without the real data nothing starts here: test_docs's own fixtures then skip, or fail under CI."""
    docs = [i for i in request.session.items if _is_docs_test(i)]
    module = docs[0].module if docs else None
    if module is not None and shared_data_dir().exists():
        try:
            module.start_in_background(tmp_path_factory.mktemp("docs"), shared_data_dir())
        except Exception as e:  # the docs tests' own fixture tries again and reports it; the rest runs on
            print(f"the documented commands did not start in the background: {e!r}")
    yield
    if module is not None and module.BACKGROUND is not None:  # an interrupted session: no new command starts
        module.BACKGROUND.pool.shutdown(wait=False, cancel_futures=True)
