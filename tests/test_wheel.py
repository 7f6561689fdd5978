"""The package as a wheel: it builds, holds every module (and no tests), and runs the bundles from a copy of
``bundles/`` outside the checkout, with the installed package, not the source tree, on the path: the training and
embeddings of SimCLR and DINO (two views and a CNN, multi-crop and a ViT), the classifier's training and evaluation
through the label-efficiency study.

The wheel is installed with ``--no-deps --target`` beside this environment's dependencies (a clean
environment would download them: see the closing notes for that check)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from monai_cxrssl.paths import REPO_ROOT, RUN_OUTPUTS
from small_methods import bundles


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_runs_every_bundle_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy of what the package is built from: no stale build/ of the checkout in the wheel
    shutil.copytree(REPO_ROOT / "monai_cxrssl", src / "monai_cxrssl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("monai_cxrssl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "monai_cxrssl").rglob("*.py"))
    assert [m for m in modules if m not in names] == [], "modules missing from the wheel"
    assert not any(n.startswith(("tests/", "bundles/", "benchmarks/")) for n in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    work = tmp_path / "work"
    shutil.copytree(REPO_ROOT / "bundles", work / "bundles", ignore=shutil.ignore_patterns(*RUN_OUTPUTS))
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}

    def run(*args):
        proc = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        return proc

    where = run("-c", "import monai_cxrssl; print(monai_cxrssl.__file__)").stdout.strip()
    assert where.startswith(str(site)), where
    # the command line once (SimCLR's training), then every pretraining bundle's training and embeddings through
    # MONAI's Python entry point in one process (one import of torch and MONAI instead of two per bundle)
    cli = ["--image_size", "32", "--batch_size", "8", "--progress", "false", "--cache_workers", "1", "--epochs", "1"]
    configs = work / "bundles" / "simclr_cxr" / "configs"
    run("-m", "monai.bundle", "run", "--config_file", str(configs / "train.json"), *cli, "--backbone", "resnet10")
    assert (work / "bundles" / "simclr_cxr" / "models" / "backbone.pt").is_file()
    script = (
        "import sys\n"
        "from monai.bundle import run\n"
        "for bundle in sys.argv[2:]:\n"
        "    configs = f'bundles/{bundle}/configs/'\n"
        "    small = dict(image_size=32, batch_size=8, progress=False, cache_workers=1,\n"
        "                 backbone='vit_tiny' if bundle == 'dino_cxr' else 'resnet10')\n"
        "    dino = dict(local_size=16, local_crops=2, out_dim=1024, hidden_dim=256, bottleneck_dim=64)\n"
        "    if bundle != sys.argv[1]:\n"
        "        run(config_file=configs + 'train.json', epochs=1, **small, **(dino if bundle == 'dino_cxr' else {}))\n"
        "    run(config_file=configs + 'inference.json', **small)\n"
        "    print('ran', bundle, flush=True)\n")
    # SimCLR (two views, a CNN) and DINO (multi-crop, a ViT): every pretraining bundle is the shared wiring merged
    # with its method.json (monai_cxrssl.bundle_sync, kept in sync by test_bundles_metadata), and MoCo, MICLe and BYOL
    # differ from SimCLR only in their method modules, in the wheel as checked above; each trains from the checkout
    # in its own test_bundle_* module
    assert {"simclr_cxr", "moco_cxr", "micle_cxr", "dino_cxr", "byol_cxr"} <= set(bundles())
    pretraining = ["simclr_cxr", "dino_cxr"]
    proc = run("-c", script, "simclr_cxr", *pretraining)
    for bundle in pretraining:
        assert f"ran {bundle}" in proc.stdout, bundle
        assert (work / "bundles" / bundle / "models" / "backbone.pt").is_file(), bundle
        assert (work / "bundles" / bundle / "embeddings" / "embeddings.npy").is_file(), bundle
    # the study finds the classifier bundle under the current directory when the package is not a checkout
    run("-m", "monai_cxrssl.experiments.label_efficiency", "--out", "study", "--allow-demo", "--init", "random",
        "--modes", "linear", "--fractions", "1.0", "--seeds", "0", "--backbone", "resnet10", "--image-size", "32",
        "--batch-size", "8", "--n-resamples", "20", "--eval-resamples", "10", "--set", "cache_workers=1")
    results = json.loads((work / "study" / "results.json").read_text())
    assert results["study"]["bundle_dir"] == str((work / "bundles" / "cxr_classifier").resolve())
