"""Shared fixtures.

``shared_data`` gives the folder of real radiographs (``$CXRSSL_SHARED_DATA`` or ``../shared/data``).
When it is missing, tests that need it skip on a developer machine but FAIL under ``CI=true``:
CI must never pass by skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monai_cxrssl.paths import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
