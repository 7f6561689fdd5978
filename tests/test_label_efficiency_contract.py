"""The study's contract with the classifier bundle (experiments/label_efficiency/contract.py)."""

from __future__ import annotations

from pathlib import Path


def test_the_classifier_bundle_holds_the_study_contract(tmp_path):
    """Every setting the study gives a run is a setting of the classifier bundle, and the files it reads are where
    the bundle writes them (the bundle's own configs, resolved with an output_dir)."""
    from monai.bundle import ConfigParser

    from monai_cxrssl.engines.classification import MODEL_INFO
    from monai_cxrssl.evaluation.report import METRICS_JSON, PREDICTIONS_CSV
    from monai_cxrssl.experiments.label_efficiency import CONTROLLED, DEFAULT_BUNDLE_DIR, RUN_FILES

    configs = DEFAULT_BUNDLE_DIR / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    missing = [k for k in CONTROLLED if k not in parser.get()]
    assert not missing, f"the study sets {missing}, which the classifier bundle does not have"
    out = tmp_path / "run"
    parser["output_dir"] = str(out)
    report = parser.get_parsed_content("validate#report", instantiate=True)
    assert out / RUN_FILES["metrics"] == report.output_dir / METRICS_JSON
    assert out / RUN_FILES["predictions"] == report.output_dir / PREDICTIONS_CSV
    assert out / RUN_FILES["model_info"] == Path(parser.get_parsed_content("ckpt_dir")) / MODEL_INFO
