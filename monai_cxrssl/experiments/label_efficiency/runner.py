"""Running the classifier bundle in this process (one run's log, MONAI's bundle API), and reading a run's predictions
back."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .contract import StudyError


@contextlib.contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Send every log record of at least INFO to ``path`` while the run lasts."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _bundle(config_files: Sequence[Path], workflow_type: str, overrides: dict) -> None:
    """``initialize``, ``run``, ``finalize`` of a config workflow, in this process."""
    from monai.bundle import ConfigWorkflow
    from monai.handlers import TensorBoardHandler

    quiet = logging.getLogger("monai.bundle.workflows")  # it warns that we pass no logging file: on purpose
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        wf = ConfigWorkflow(config_file=[str(f) for f in config_files], workflow_type=workflow_type, logging_file=False,
                            **overrides)
    finally:
        quiet.setLevel(level)
    saved_path = list(sys.path)  # ConfigWorkflow.run prepends the bundle folder
    try:
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        sys.path[:] = saved_path
        # close the TensorBoard writers the run created (open files otherwise, one per handler and run)
        for obj in list(getattr(wf.parser.ref_resolver, "resolved_content", {}).values()):
            if isinstance(obj, TensorBoardHandler):
                with contextlib.suppress(Exception):
                    obj.close()
        del wf
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _read_predictions(path: Path) -> dict:
    from monai_cxrssl.evaluation.report import read_predictions

    try:
        return read_predictions(path)
    except FileNotFoundError:
        raise StudyError(f"'{path}' does not exist: the run did not finish its evaluation") from None
    except ValueError as e:
        raise StudyError(str(e)) from None
