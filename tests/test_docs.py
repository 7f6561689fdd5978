"""The documentation is tested: every shell command in the docs runs as written, and every bundle config runs
with its defaults.

- **Documented commands.** Every command in a ```` ```bash ```` block of ``README.md`` and
  ``bundles/*/docs/README.md`` is collected from the files themselves (a command added to the docs is tested
  without anyone writing a test for it) and run as written, in document order, from a copy of the repository
  (so that one command's outputs, e.g. ``bundles/simclr_cxr/models/backbone.pt``, are there for the
  next). Only two things are changed:

  1. settings that make it small are *appended* (the last value of a repeated setting wins, for
     ``monai.bundle`` and ``argparse`` alike): one epoch, 32 px, batch 8 (see :func:`small_settings`);
  2. the example data paths (``/data/kermany_pneumonia_224``, ``/weights/dinov2_vits14_pretrain.pth``,
     ``my_datalist.json``, ...) are replaced by real data from ``$CXRSSL_SHARED_DATA`` (a few images of each
     class, laid out as the original folders) or by small generated stand-ins (:data:`EXAMPLE_PATHS`).

  Environment set-up lines (``python3 -m venv``, ``pip install``, ``python -m pytest``) are checked to be
  what ``.ci/run`` runs; the tutorials' command-line cells are run, as written, by ``tests/test_tutorials.py``.
  Each command must exit 0, and a training run must show its progress bar (on by default) and write its
  checkpoint; a command writing ``-o FILE`` must write it.

- **Bundle defaults.** Every config of every bundle (``train``, ``inference``, the classifier's ``evaluate`` and
  ``evaluate_shift``) runs with nothing overridden but the epoch count, progress bar on, on the synthetic demo
  data, as a user on a fresh clone gets it; training reads the demo generator's set with 42 training images
  (``--datalist``), one batch of the defaults' size, where a fresh clone writes 96. ``multi_gpu_train``, an
  overlay of ``train`` whose settings are train's, runs under ``torchrun`` with 2 processes through each bundle's
  documented command (small settings appended: the defaults' sizes are run by ``train`` already), which every
  pretraining bundle's docs must have.

The command groups (one per document, one per bundle's defaults) run three at a time, each in its own copy of
the repository with its own ``torchrun`` port; each command is one test, reported with its output. A ``python``
command runs in a process forked from a server that has imported torch, MONAI and the package of that copy once
(``tests/zygote.py``: the same argv, working directory and environment; ``python -m`` and scripts as the
interpreter runs them), which saves about 10 s of CPU per command; ``torchrun`` and the rest start fresh, and
``CXRSSL_TEST_FRESH_PROCESSES=1`` starts every command fresh.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from runner import FRESH_PROCESSES, Zygote, free_port

from monai_cxrssl.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

DOCS = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob("bundles/*/docs/README.md"))]
SSL_BUNDLES = sorted(p.parent.parent.name for p in REPO_ROOT.glob("bundles/*_cxr/configs/train.json"))
#: lines that set up the environment: run by ``.ci/run`` itself, which must contain each of them
SETUP = re.compile(r"^(python3? -m venv |pip install |python -m pytest)")
#: commands that cannot run here, each with the reason; every entry must still be in the docs
NOT_RUN = {
    "/work/venv-lightly/bin/python benchmarks/lightly_baseline.py":
        "the lightly reference needs its own venv with lightly and torchvision, which does not import beside the "
        "CPU torch wheel; it is a measurement, not a product command",
    "export CXRSSL_DICOMWEB_USER=":
        "sets the credentials of a real PACS for the next command",
    "python -m monai_cxrssl datalist dicomweb http://pacs.example.org":
        "needs a DICOMweb server; tests/test_dicomweb.py runs this command against a real Orthanc on 127.0.0.1",
    "python -m monai.bundle run --config_file bundles/simclr_cxr/configs/train.json --datalist pacs.json":
        "trains on what the PACS command retrieved; tests/test_dicomweb.py trains from a datalist retrieved from Orthanc",
    "python -m monai.bundle run --config_file bundles/cxr_classifier/configs/train.json --datalist pacs_labelled.json":
        "trains on images retrieved from a PACS with labels; tests/test_dicomweb.py trains a classifier from a datalist "
        "retrieved from Orthanc with labels joined by accession",
    "python -m monai.bundle run --config_file bundles/cxr_classifier/configs/inference.json --output_dir "
    "runs/pacs_classifier":
        "stores structured reports to a PACS; tests/test_dicomweb.py runs inference with --dicomweb_output against "
        "Orthanc and reads the reports back",
    "python benchmarks/dicomweb_retrieval.py":
        "starts Orthanc through tests/orthanc.py, which the docs' sandbox leaves out; tests/test_dicomweb.py runs "
        "this benchmark small",
    "sbatch tutorials/slurm/pretrain_multinode.sbatch":
        "needs a SLURM cluster; tests/test_distributed.py runs the script as written on 2 nodes simulated here "
        "(srun and scontrol stand-ins)",
}
SMALL = ["--epochs", "1", "--image_size", "32", "--batch_size", "8"]
#: command groups run at once: a command spends much of its time importing and reading (one core), so a third
#: group fills the two cores better than two
WORKERS = 3
#: all the command groups together may take this long (a tiny bundle run takes 5-15 s alone; beside the rest
#: of the suite, about twice that)
GROUP_TIMEOUT = 2400


# ---------------------------------------------------------------------------------------------------------
# collecting the commands


@dataclass
class Command:
    doc: str
    line: int
    text: str  # as written (continuation lines joined, comments dropped)
    argv: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _tokens(text: str) -> list[str]:
    """Shell words of ``text``; a word starting with ``#`` starts a comment (``a#b`` is one word)."""
    words = shlex.split(text, comments=False)
    for i, w in enumerate(words):
        if w.startswith("#"):
            return words[:i]
    return words


def doc_commands(doc: str) -> list[Command]:
    """Every command in the ```` ```bash ```` blocks of ``doc``, continuation lines joined."""
    lines = (REPO_ROOT / doc).read_text().splitlines()
    out, in_block, pending, start = [], False, "", 0
    for n, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_block = line.strip() in ("```bash", "```sh", "```shell") if not in_block else False
            continue
        if not in_block:
            continue
        if not pending:
            start = n
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        argv = _tokens(text)
        if argv:
            out.append(Command(doc, start, text, argv))
    return out


ALL_COMMANDS = [c for doc in DOCS for c in doc_commands(doc)]


def _kind(cmd: Command) -> str:
    if SETUP.match(cmd.text):
        return "setup"
    if any(cmd.text.startswith(k) for k in NOT_RUN):
        return "not_run"
    return "run"


# ---------------------------------------------------------------------------------------------------------
# data stand-ins


def _copy_subset(src: Path, dst: Path, per_folder: int) -> None:
    """``per_folder`` images of every leaf folder of ``src`` (sorted, every k-th: many patients), same layout."""
    for folder in sorted(p for p in src.rglob("*") if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in (".png", ".jpeg", ".jpg"))
        if not files:
            continue
        step = max(1, len(files) // per_folder)
        target = dst / folder.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for f in files[::step][:per_folder]:
            shutil.copy2(f, target / f.name)


def _dinov2_standin(path: Path) -> None:
    """A file in the public DINOv2 ViT-S/14 layout (``dinov2_vits14_pretrain.pth``) with random weights."""
    import torch

    g = torch.Generator().manual_seed(0)
    d, depth, mlp = 384, 12, 1536

    def rand(*shape):
        return 0.02 * torch.randn(*shape, generator=g)

    state = {"cls_token": rand(1, 1, d), "pos_embed": rand(1, 1 + 37 * 37, d), "mask_token": torch.zeros(1, d),
             "patch_embed.proj.weight": rand(d, 3, 14, 14), "patch_embed.proj.bias": torch.zeros(d),
             "norm.weight": torch.ones(d), "norm.bias": torch.zeros(d)}
    for b in range(depth):
        state.update({f"blocks.{b}.{k}": v for k, v in {
            "norm1.weight": torch.ones(d), "norm1.bias": torch.zeros(d),
            "attn.qkv.weight": rand(3 * d, d), "attn.qkv.bias": torch.zeros(3 * d),
            "attn.proj.weight": rand(d, d), "attn.proj.bias": torch.zeros(d), "ls1.gamma": torch.full((d,), 0.1),
            "norm2.weight": torch.ones(d), "norm2.bias": torch.zeros(d),
            "mlp.fc1.weight": rand(mlp, d), "mlp.fc1.bias": torch.zeros(mlp),
            "mlp.fc2.weight": rand(d, mlp), "mlp.fc2.bias": torch.zeros(d), "ls2.gamma": torch.full((d,), 0.1)}.items()})
    torch.save(state, path)


def _torchvision_resnet_standin(path: Path) -> None:
    """Random weights in torchvision's ResNet-18 layout: RGB stem, no shortcut-convolution bias, ImageNet head."""
    import torch

    from monai_cxrssl.networks import build_backbone

    state = {k[len("net."):]: v for k, v in build_backbone("resnet18", in_channels=3).state_dict().items()
             if not k.endswith("downsample.0.bias")}
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(state, path)


def _folder_datalist(folder: Path, out: Path, extra=None, class_folders=False) -> None:
    from monai_cxrssl.data.datalist import build_datalist, datalist_from_class_folders

    dl = datalist_from_class_folders(folder) if class_folders else build_datalist(folder)
    if extra:
        dl = {k: ([{**e, **extra(e)} for e in v] if isinstance(v, list) and v and isinstance(v[0], dict) else v)
              for k, v in dl.items()}
    out.write_text(json.dumps(dl, indent=1))


def make_stand_ins(root: Path, shared: Path) -> dict[str, str]:
    """Small real data and generated files for the docs' example paths; returns path -> stand-in."""
    kermany, nih = root / "data" / "kermany_pneumonia_224", root / "data" / "nih"
    _copy_subset(shared / "kermany_pneumonia_224", kermany, per_folder=24)
    # all of the NIH subset (1,000 images of 64 px, 7 MB): a classifier trained on its 14 findings (the
    # supervised-pretraining example) needs a positive of each rare finding in its training list
    _copy_subset(shared / "nih_cxr14_1000_64", nih, per_folder=10_000)
    kept = {p.relative_to(nih).as_posix() for p in nih.rglob("*.png")}
    with open(shared / "nih_cxr14_1000_64" / "labels.csv", newline="") as f, open(nih / "labels.csv", "w", newline="") as g:
        rows = csv.DictReader(f)
        w = csv.DictWriter(g, fieldnames=rows.fieldnames)
        w.writeheader()
        w.writerows(r for r in rows if r["image"] in kept)
    (root / "weights").mkdir()
    _dinov2_standin(root / "weights" / "dinov2_vits14_pretrain.pth")
    _torchvision_resnet_standin(root / "weights" / "resnet18-imagenet.pth")
    # the bundle defaults' training data: the demo set's generator with 42 training images of 34 patients, one
    # batch of the defaults (32 images; MICLe's of 32 patients), where DINO's ViT-S at 224 px takes about 40 s of
    # both cores per batch here
    from monai_cxrssl.data.phantoms import write_demo_dataset

    write_demo_dataset(root / "data" / "demo_small", n_train=42, n_val=8, n_test=8)
    _folder_datalist(kermany, root / "data" / "kermany.json")
    _folder_datalist(kermany, root / "data" / "kermany_studies.json", extra=lambda e: {"study_id": e["patient_id"]})
    _folder_datalist(nih, root / "data" / "nih_binary.json", class_folders=True)  # normal / abnormal
    return {
        "/data/demo_small": str(root / "data" / "demo_small"),
        "/data/kermany_pneumonia_224": str(kermany),
        "/data/kermany": str(kermany),
        "/data/cxr": str(kermany),
        "/data/nih/labels.csv": str(nih / "labels.csv"),
        "/data/nih": str(nih),
        "/data/dicoms": str(shared / "dicom"),
        "/data/new_dicoms": str(shared / "dicom"),
        "/weights/dinov2_vits14_pretrain.pth": str(root / "weights" / "dinov2_vits14_pretrain.pth"),
        "/weights/resnet18-imagenet.pth": str(root / "weights" / "resnet18-imagenet.pth"),
        "my_datalist.json": str(root / "data" / "kermany.json"),
        "my_hospital.json": str(root / "data" / "kermany.json"),
        "dl.json": str(root / "data" / "kermany_studies.json"),
        "nih_binary.json": str(root / "data" / "nih_binary.json"),
        "other_hospital.json": str(root / "data" / "nih_binary.json"),
    }


#: the docs' example paths (keys of :func:`make_stand_ins`) and "another run's backbone"
EXAMPLE_PATHS = ("/data/", "/weights/", "/runs/", "my_datalist.json", "my_hospital.json", "dl.json",
                 "nih_binary.json", "other_hospital.json")


# ---------------------------------------------------------------------------------------------------------
# running


def _configs(argv: list[str]) -> list[str]:
    if "--config_file" not in argv:
        return []
    value = argv[argv.index("--config_file") + 1]
    return re.findall(r"bundles/[\w]+/configs/[\w]+\.json", value) or [value]


def small_settings(argv: list[str]) -> list[str]:
    """Settings appended to a documented command to make it small (its own settings are left as written)."""
    configs = _configs(argv)
    if "monai.bundle" in argv:
        if any(c.endswith("inference.json") for c in configs):
            return ["--batch_size", "8"]
        small = list(SMALL)
        if "--resume" in argv:  # resuming a finished one-epoch run: one more epoch
            small[1] = "2"
        if any("dino_cxr" in c for c in configs):
            # a small head; precision as the command has it (auto: at these 16 px local crops a ResNet meets
            # the CPU's bf16 convolution defect, and auto then trains in fp32: see engines/precision.py)
            small += ["--local_size", "16", "--local_crops", "2", "--out_dim", "1024", "--hidden_dim", "256",
                      "--bottleneck_dim", "64"]
        return small
    if "monai_cxrssl.experiments.label_efficiency" in argv:
        return ["--fractions", "1.0", "--seeds", "0", "--epochs-linear", "1", "--epochs-finetune", "1",
                "--image-size", "32", "--batch-size", "8", "--n-resamples", "50", "--eval-resamples", "20"]
    # the benchmarks read $CXRSSL_SHARED_DATA/kermany_pneumonia_224 by default: the same few images as above
    if any(a.startswith("benchmarks/ssl_throughput.py") for a in argv):
        return ["--sizes", "32", "--bf16-sizes", "--steps", "1", "--reps", "1", "--warmup", "0", "--batch-size", "4",
                "--data", "/data/kermany_pneumonia_224"]
    if any(a.startswith("benchmarks/data_scale.py") for a in argv):  # 40 generated images; 80 and a SimCLR step
        if "--simclr-steps" in argv:                                   # from each source where steps are asked for
            return ["--images", "80", "--ranks", "1", "--image-size", "32", "--simclr-steps", "1"]
        return ["--images", "40", "--ranks", "1", "--image-size", "32", "--simclr-steps", "0"]
    if any(a.startswith("benchmarks/store_formats.py") for a in argv):  # 200 images in each format
        return ["--images", "200"]
    if any(a.startswith("benchmarks/datalist_scale.py") for a in argv):  # 3,000 generated entries
        return ["--entries", "3000"]
    if any(a.startswith("benchmarks/downstream_throughput.py") for a in argv):
        return ["--image-size", "32", "--batch-size", "8", "--modes", "fast", "--label-fraction", "1.0",
                "--data", "/data/kermany_pneumonia_224"]
    return []


@dataclass
class Result:
    argv: list[str]
    returncode: int | None
    output: str
    seconds: float
    started: float
    cwd: Path | None = None
    #: the wall-clock start (``time.time()``), for file times; ``started`` is monotonic, which a paused machine
    #: does not advance while its wall clock moves on
    wall_started: float = 0.0


class Sandbox:
    """A copy of the repository's tracked files, where a group of commands runs in order."""

    def __init__(self, root: Path, stand_ins: dict[str, str]):
        self.root = root
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        for rel in filter(None, files.decode().split("\0")):
            src = REPO_ROOT / rel
            if src.is_file() and not rel.startswith("tests/"):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, root / rel)
        self.stand_ins = stand_ins
        self.last_backbone: str | None = None
        self.zygote: Zygote | None = None
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
                    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                    "PET_MASTER_PORT": str(free_port())}  # torchrun's --master_port, per sandbox

    def substitute(self, word: str) -> str:
        name, eq, value = word.partition("=")
        if eq and not word.startswith("-") and value.startswith(EXAMPLE_PATHS):  # --init NAME=PATH
            return f"{name}={self.substitute(value)}"
        if word.startswith("/runs/") and word.endswith("/models/backbone.pt"):
            if self.last_backbone is None:
                raise AssertionError(f"'{word}' (another run's backbone) needs a pretraining command before it")
            return self.last_backbone
        for example, real in sorted(self.stand_ins.items(), key=lambda kv: -len(kv[0])):
            if word == example or word.startswith(example + "/"):
                return real + word[len(example):]
        if word.startswith(EXAMPLE_PATHS):
            raise AssertionError(f"no stand-in for the example path '{word}': add one to make_stand_ins")
        return word

    def run(self, argv: list[str], timeout: float) -> Result:
        """``argv`` in the sandbox: a ``python`` command through the sandbox's zygote (``tests/zygote.py``, the
        package imported once from this copy: about 10 s of CPU saved per command), anything else as a fresh
        process (``torchrun`` among them)."""
        t0, wall0 = time.monotonic(), time.time()
        try:
            through_zygote = argv[0] in ("python", "python3") and argv[1:2] != ["-c"]  # -m MODULE or a script
            if through_zygote and not FRESH_PROCESSES:
                if self.zygote is None:
                    self.zygote = Zygote(package_root=self.root, env=self.env)
                proc = self.zygote.run(argv[1:], self.root, self.env, timeout)
            else:
                proc = subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True,
                                      timeout=timeout)
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            code, out = None, f"timed out after {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
        except (RuntimeError, TimeoutError) as e:  # the zygote itself died: this command fails, the next starts anew
            code, out = None, f"tests/zygote.py failed: {e}"
            self.zygote = None
        for config in _configs(argv):
            bundle = config.split("/")[1]
            if bundle in SSL_BUNDLES and (self.root / "bundles" / bundle / "models" / "backbone.pt").is_file():
                self.last_backbone = str(self.root / "bundles" / bundle / "models" / "backbone.pt")
        return Result(argv, code, out if isinstance(out, str) else out.decode(errors="replace"),
                      time.monotonic() - t0, t0, self.root, wall0)


def _run_group(sandbox: Sandbox, jobs: list[tuple[str, list[str]]], deadline: float) -> dict[str, Result]:
    try:
        return _run_jobs(sandbox, jobs, deadline)
    finally:
        if sandbox.zygote is not None:
            sandbox.zygote.close()


def _run_jobs(sandbox: Sandbox, jobs: list[tuple[str, list[str]]], deadline: float) -> dict[str, Result]:
    results = {}
    for key, argv in jobs:
        left = deadline - time.monotonic()
        if left <= 0:
            results[key] = Result(argv, None, "not run: the group's time was used up", 0.0, time.monotonic())
            continue
        try:
            argv = [sandbox.substitute(w) for w in argv]
        except AssertionError as e:
            results[key] = Result(argv, None, str(e), 0.0, time.monotonic())
            continue
        results[key] = sandbox.run(argv, timeout=min(left, 600))
    return results


def default_jobs(bundle: str) -> list[tuple[str, list[str]]]:
    """Each config of ``bundle`` with nothing overridden but the epoch count and, for training, the data: the demo
    set's generator with 42 training images (one batch of the defaults, instead of three) in place of its 96;
    inference: nothing at all (the bundle's own demo set, written by the run)."""
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    c = f"bundles/{bundle}/configs"
    run = ["python", "-m", "monai.bundle", "run", "--config_file"]  # this environment's, first on the sandbox's PATH
    one = ["--epochs", "1", "--datalist", "/data/demo_small/datalist.json"]
    if bundle == "cxr_classifier":
        return [
            ("train", run + [f"{c}/train.json"] + one),
            ("evaluate", run + [f"['{c}/train.json','{c}/evaluate.json']"] + one),
            ("evaluate_shift", run + [f"['{c}/train.json','{c}/evaluate.json','{c}/evaluate_shift.json']"] + one),
            ("inference", run + [f"{c}/inference.json"]),
        ]
    jobs = [("train", run + [f"{c}/train.json"] + one)]
    if (configs / "inference.json").is_file():  # the pretrained encoder's embeddings of the demo images
        jobs.append(("inference", run + [f"{c}/inference.json"]))
    return jobs


BUNDLES = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


class DocRuns:
    """Every command group, started at once: ``WORKERS`` groups at a time in worker threads (each command
    is a subprocess); :meth:`results` waits for them. ``conftest.py`` starts one at the beginning of the
    session, so that the commands run beside the rest of the suite (which keeps one core busy at most of
    the time), and orders this module's tests last."""

    def __init__(self, base: Path, shared: Path):
        self.base = base
        stand_ins = make_stand_ins(base / "stand_ins", shared)
        groups: dict[str, list[tuple[str, list[str]]]] = {}
        for doc in DOCS:
            for c in doc_commands(doc):
                if _kind(c) == "run":  # the benchmarks only read data: a group of their own, run beside the rest
                    group = f"{doc}:benchmarks" if c.argv[1:2] and c.argv[1].startswith("benchmarks/") else doc
                    groups.setdefault(group, []).append((c.id, c.argv + small_settings(c.argv)))
        for bundle in BUNDLES:
            groups[f"defaults:{bundle}"] = default_jobs(bundle)

        def estimate(group: str) -> float:  # seconds, roughly, as measured here: a tiny run ~10 s, a default one ~30 s
            per_job = 90 if group == "defaults:dino_cxr" else 30 if group.startswith("defaults:") else 10
            return per_job * len(groups[group])

        order = sorted(groups, key=estimate, reverse=True)  # the longest groups first: the workers end together
        sandboxes = {}
        for i, g in enumerate(order):
            (base / f"repo{i}").mkdir()
            sandboxes[g] = Sandbox(base / f"repo{i}", stand_ins)
        deadline = time.monotonic() + GROUP_TIMEOUT
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="doc-commands")
        self.futures = {g: self.pool.submit(_run_group, sandboxes[g], groups[g], deadline) for g in order}

    def results(self) -> dict[str, dict[str, Result]]:
        results = {g: f.result() for g, f in self.futures.items()}
        self.pool.shutdown()
        return results

    def remove_weights(self) -> None:
        """The weights and caches (~7 GB in all); the logs stay for a failure to be read."""
        for f in self.base.rglob("*"):
            if f.suffix in (".pt", ".pth", ".ts", ".npz") and f.is_file():
                f.unlink()


#: started by conftest.py at the beginning of the session (None when this module runs on its own)
BACKGROUND: DocRuns | None = None


def start_in_background(base: Path, shared: Path) -> None:
    global BACKGROUND
    BACKGROUND = DocRuns(base, shared)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kermany_dir, nih_dir, dicom_dir) -> dict[str, dict[str, Result]]:
    """Every command group's results, ``{group: {key: Result}}`` (real data: skip or, in CI, fail)."""
    started = BACKGROUND or DocRuns(tmp_path_factory.mktemp("docs"), kermany_dir.parent)
    results = started.results()
    timing = sorted(((r.seconds, k) for rs in results.values() for k, r in rs.items()), reverse=True)[:8]
    print("slowest documented/default commands:", ", ".join(f"{k} {s:.0f} s" for s, k in timing))
    yield results
    started.remove_weights()


def _fail(result: Result, what: str) -> str:
    cmd = " ".join(shlex.quote(a) for a in result.argv)
    return f"{what}\n$ {cmd}\nexit {result.returncode} after {result.seconds:.0f} s\n{result.output[-4000:]}"


def _setting(argv: list[str], name: str) -> str | None:
    """The last value of ``--name`` in ``argv`` (the one that wins), or ``None``."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == f"--{name}"]
    return values[-1] if values else None


def _check(result: Result, argv_as_written: list[str]) -> None:
    assert result.returncode == 0, _fail(result, "the command failed")
    configs = _configs(argv_as_written)
    training = [c for c in configs if c.endswith(("train.json", "multi_gpu_train.json"))] and not any(
        c.endswith(("evaluate.json", "evaluate_shift.json")) for c in configs)
    probe = _setting(argv_as_written, "mode") == "linear" and _setting(argv_as_written, "linear_solver") != "adamw"
    if "monai.bundle" in argv_as_written and "build_store" in argv_as_written:  # the image store, no training
        assert re.search(r"image store \S+:\s+\d+%\|", result.output), \
            _fail(result, "building an image store shows its progress bar (on by default)")
        store = result.cwd / _setting(argv_as_written, "store_dir") / "store.json"
        assert store.is_file() and store.stat().st_mtime >= result.wall_started - 1, \
            _fail(result, f"the command should have written {store}")
    elif "monai.bundle" in argv_as_written and training and probe:  # the logistic probe: features, then seconds
        assert re.search(r"backbone features of \d+ images:\s+\d+%\|", result.output), \
            _fail(result, "a linear probe shows the progress of its feature pass (on by default)")
        assert "logistic probe on" in result.output, _fail(result, "a linear probe reports its fit")
    elif "monai.bundle" in argv_as_written and training:
        assert re.search(r"\[\d+/\d+\]\s+\d+%\|", result.output), \
            _fail(result, "a training run shows its progress bar (on by default)")
        assert "saved checkpoint at epoch" in result.output, _fail(result, "a training run writes its checkpoint")
    if "-o" in argv_as_written:
        out = result.cwd / argv_as_written[argv_as_written.index("-o") + 1]
        assert out.is_file() and out.stat().st_mtime >= result.wall_started - 1, \
            _fail(result, f"the command should have written {out}")
    assert "Traceback" not in result.output, _fail(result, "the command printed a traceback")


# ---------------------------------------------------------------------------------------------------------
# the tests


def test_the_docs_have_commands_and_every_one_is_run_or_accounted_for():
    kinds = {c.id: _kind(c) for c in ALL_COMMANDS}
    assert sum(k == "run" for k in kinds.values()) >= 40, "the command collector found too few commands"
    for doc in DOCS:
        assert any(_kind(c) == "run" for c in doc_commands(doc)), f"{doc}: no command found"
    ci = set()
    for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines():
        try:
            ci.add(" ".join(_tokens(line)))
        except ValueError:  # a line of a multi-line quoted string
            continue
    for c in ALL_COMMANDS:
        if _kind(c) == "setup":
            for part in (p.strip() for p in re.split(r"&&", c.text)):
                if part.startswith(("python3 -m venv", "source ")):
                    continue  # .ci/run makes and activates its own venv
                line = " ".join(_tokens(part))
                assert line in ci, f"{c.id}: '{line}' (environment set-up) is not run by .ci/run"
    for prefix in NOT_RUN:
        assert any(c.text.startswith(prefix) for c in ALL_COMMANDS), f"NOT_RUN lists '{prefix}', no longer documented"


def test_tutorial_command_cells_are_executed_by_the_notebook_tests():
    import nbformat

    sys.path.insert(0, str(Path(__file__).parent))
    from test_tutorials import NOTEBOOKS, TIME_LIMIT

    cells = 0
    for nb_path in sorted((REPO_ROOT / "tutorials").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.source.startswith("%%bash"):
                cells += 1
                assert "set -eo pipefail" in cell.source, f"{nb_path.name}: a failing command must fail the cell"
                assert nb_path.name in NOTEBOOKS and nb_path.name in TIME_LIMIT, f"{nb_path.name} is not executed"
    assert cells >= 3


@pytest.mark.timeout(GROUP_TIMEOUT + 300)
@pytest.mark.parametrize("cmd", [c for c in ALL_COMMANDS if _kind(c) == "run"], ids=lambda c: c.id)
def test_documented_command_runs_as_written(cmd: Command, runs):
    group = runs[cmd.doc] if cmd.id in runs.get(cmd.doc, {}) else runs[f"{cmd.doc}:benchmarks"]
    _check(group[cmd.id], cmd.argv)


def test_every_multi_process_config_is_run_through_its_documented_torchrun_command():
    for bundle in BUNDLES:
        overlay = f"bundles/{bundle}/configs/multi_gpu_train.json"
        if not (REPO_ROOT / overlay).is_file():
            continue
        commands = [c for c in doc_commands(f"bundles/{bundle}/docs/README.md") if _kind(c) == "run"]
        assert any(c.argv[:1] == ["torchrun"] or "torch.distributed.run" in c.argv[:3] for c in commands
                   if overlay in " ".join(c.argv)), f"bundles/{bundle}/docs/README.md: no torchrun command with {overlay}"


@pytest.mark.timeout(GROUP_TIMEOUT + 300)
@pytest.mark.parametrize("bundle_config", [f"{b}:{k}" for b in BUNDLES for k, _ in default_jobs(b)])
def test_bundle_config_runs_with_its_defaults(bundle_config: str, runs):
    bundle, key = bundle_config.split(":")
    result = runs[f"defaults:{bundle}"][key]
    _check(result, result.argv)
    assert "SYNTHETIC" in result.output, _fail(result, "the defaults use the synthetic demo data and say so")
    if bundle in SSL_BUNDLES and key == "train":  # what a user gets: the backbone and image size of train.json
        from monai_cxrssl.checkpoints import load_backbone_weights, read_checkpoint
        from monai_cxrssl.networks import build_backbone

        config = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
        outputs = result.cwd / "bundles" / bundle  # the default output_dir: the bundle's folder
        ckpt = read_checkpoint(outputs / "checkpoint.pt")
        assert ckpt["backbone"]["name"] == config["backbone"], _fail(result, "the default backbone")
        assert ckpt["metadata"]["image_size"] == config["image_size"], _fail(result, "the default image size")
        spec = {k: v for k, v in ckpt["backbone"].items() if k != "out_dim"}
        load_backbone_weights(build_backbone(spec.pop("name"), **spec), outputs / "models" / "backbone.pt")
    if bundle in SSL_BUNDLES and key == "inference":  # one embedding per demo image, each once
        from monai_cxrssl.evaluation import read_embeddings

        emb, paths, _ = read_embeddings(result.cwd / "bundles" / bundle / "embeddings")
        demo = json.loads((result.cwd / "bundles" / bundle / "demo_data" / "datalist.json").read_text())
        n = sum(len(v) for k, v in demo.items() if k in ("training", "validation", "test"))
        assert emb.shape[0] == n == len(set(paths)), _fail(result, f"{n} demo images embedded once each")
