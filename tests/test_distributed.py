"""Multi-process training with torchrun (Gloo on CPU): the same results as one process with the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runner import free_port, torchrun

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.data import CXRImageStore
from monai_cxrssl.paths import REPO_ROOT
from small_methods import METHODS

@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(two_process_steps, method):
    from dist_step import run_step

    # MoCo's shuffled key batches: 2 chunks in total either way (1 per process, or 2 in this one process)
    one, two = run_step(method, 8, key_splits=2), torch.load(two_process_steps / f"{method}.pt", weights_only=True)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert torch.allclose(one["params"], two["params"], atol=1e-5)  # gradients gathered and averaged right
    assert torch.allclose(one["targets"], two["targets"], atol=1e-5)  # momentum copies moved alike
    # buffers: MoCo's queue holds the keys of both processes, in the global batch's order; DINO's centre
    # averages every process's batch
    assert one["buffers"].keys() == two["buffers"].keys()
    for name, value in one["buffers"].items():
        assert torch.allclose(value.float(), two["buffers"][name].float(), atol=1e-5), name
    if "memory.ptr" in one["buffers"]:
        assert int(two["buffers"]["memory.ptr"]) == 8


SLURM_SCRIPT = REPO_ROOT / "tutorials" / "slurm" / "pretrain_multinode.sbatch"
SMALL = ["--image_size", "32", "--batch_size", "4", "--backbone", "resnet10", "--epochs", "1", "--progress", "false"]


def _slurm_job(tmp_path, data, out, *settings) -> subprocess.CompletedProcess:
    """The SLURM recipe run as written on 2 nodes simulated here: ``srun`` and ``scontrol`` stand-ins
    (``tests/fake_slurm``) start one ``torchrun`` per node at once; the rendezvous is on loopback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(__file__).with_name("fake_slurm")), str(Path(sys.executable).parent),
                                    os.environ.get("PATH", "")]),
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "2",
           "GPUS_PER_NODE": "1", "RDZV_PORT": str(free_port()), "DATASET_DIR": str(data),
           "STORE_DIR": str(tmp_path / "store"), "OUTPUT_DIR": str(out)}
    proc = subprocess.run(["bash", str(SLURM_SCRIPT), *SMALL, *settings], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the SLURM job failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_readme_shows_the_slurm_recipe_as_the_script_runs_it():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Several nodes (SLURM)"):]
    shown = section[section.index("```text\n") + 8:section.index("\n```", section.index("```text"))]
    assert "srun torchrun" in shown and shown in SLURM_SCRIPT.read_text()
    assert "tutorials/slurm/pretrain_multinode.sbatch" in section


@pytest.mark.slow
def test_simclr_on_two_nodes_by_the_slurm_recipe_resumes_on_one(tmp_path):
    """tutorials/slurm/pretrain_multinode.sbatch on 2 simulated nodes of 1 process: the image store built once, each
    process its half of every global batch, rank 0's log alone; the two-node run resumes on one node of 2 processes
    (every process loads the checkpoint rank 0 wrote). That 2 nodes train as one process with the global batch does
    is checked for every method by the ``two_process_steps`` fixture (conftest.py), on 2 loopback nodes too."""
    from monai_cxrssl.data.sources import training_items

    data, two = tmp_path / "data", tmp_path / "two_nodes"
    n_train = len(training_items(dataset_dir="", demo_dir=data))
    _slurm_job(tmp_path, data, two)
    two_nodes = read_checkpoint(two / "checkpoint.pt")
    assert two_nodes["iteration"] == n_train // (4 * 2)  # each process takes its half of every global batch
    assert len(CXRImageStore(tmp_path / "store")) == n_train and (two / "models" / "backbone.pt").is_file()
    # the log, TensorBoard and progress handlers are rank 0's only (disabled, so never built, elsewhere)
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1

    configs = ("['bundles/simclr_cxr/configs/train.json','bundles/simclr_cxr/configs/multi_gpu_train.json',"
               "'bundles/simclr_cxr/configs/image_store.json']")
    torchrun(2, "-m", "monai.bundle", "run", "--config_file", configs, "--output_dir", two, "--dataset_dir", data,
             "--store_dir", tmp_path / "store", *SMALL, "--epochs", "2", "--resume", "true")
    resumed = read_checkpoint(two / "checkpoint.pt")
    assert resumed["iteration"] == 2 * two_nodes["iteration"] and resumed["epoch"] == 2
    assert any(not torch.equal(v, two_nodes["state_dict"][k]) for k, v in resumed["state_dict"].items())


def _child_with_rank(parent: int, rank: int) -> int | None:
    """The pid of ``parent``'s child process whose environment has ``RANK=rank`` (a torchrun worker)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.slow
def test_a_stopped_rank_ends_the_run_within_the_timeout_naming_it(tmp_path):
    """SIGSTOP one of two processes mid-training: the other gives up after dist_timeout_s (not Gloo's 30
    minutes) and the run ends with an error naming the silent rank."""
    import signal
    import time

    configs = "['bundles/simclr_cxr/configs/train.json','bundles/simclr_cxr/configs/multi_gpu_train.json']"
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
             "monai.bundle", "run", "--config_file", configs, "--output_dir", str(tmp_path / "out"),
             "--image_size", "32", "--batch_size", "4", "--backbone", "resnet10", "--epochs", "50", "--progress",
             "false", "--log_every", "1", "--cache_workers", "1", "--dist_timeout_s", "10"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    stopped = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if "Iter: 2/" in log.read_text(errors="replace"):
                stopped = _child_with_rank(proc.pid, 1)
                break
            time.sleep(0.5)
        assert stopped is not None, f"training did not start, or rank 1 was not found:\n{log.read_text()[-3000:]}"
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        proc.wait(timeout=240)
        waited = time.monotonic() - t0
    finally:
        for p in filter(None, (stopped, proc.pid if proc.poll() is None else None)):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    assert proc.returncode != 0
    assert "SilentRankError" in text and "rank 1 (last heartbeat" in text and "stopped responding" in text, text[-4000:]
    assert "dist_timeout_s" in text and "10 s" in text
    assert 10 <= waited < 10 + 120, f"the run ended {waited:.0f} s after rank 1 stopped"
    print(f"rank 1 stopped: the run ended {waited:.0f} s later;", next(l for l in text.splitlines() if "SilentRankError:" in l))
