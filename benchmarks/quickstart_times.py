"""Wall time of the README's first-screen commands, run exactly as written (bundle defaults, progress bars on).

Each command runs in a fresh copy of the repository's tracked files (so the bundles' run outputs start empty and
the synthetic demo set is written, as on a fresh clone), one after the other, alone on the machine. Prints
and writes ``benchmarks/results/quickstart_times.{json,md}`` with the CPU it ran on (model, flags that
decide the precision, what ``precision auto`` picked).

    python benchmarks/quickstart_times.py            # every command of the first screen
    python benchmarks/quickstart_times.py --only simclr_cxr moco_cxr
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ssl_throughput import cpu_description  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
C = "bundles/cxr_classifier/configs"
#: (key, command as in the README's first screen, what the user gets)
COMMANDS = [
    ("simclr_cxr", "python -m monai.bundle run --config_file bundles/simclr_cxr/configs/train.json",
     "SimCLR, ResNet-18, 5 epochs at 224 px on the synthetic demo: checkpoint, backbone, TensorBoard"),
    ("moco_cxr", "python -m monai.bundle run --config_file bundles/moco_cxr/configs/train.json",
     "MoCo v2, the same budget"),
    ("micle_cxr", "python -m monai.bundle run --config_file bundles/micle_cxr/configs/train.json",
     "MICLe, the same budget (pairs of one patient's images)"),
    ("dino_cxr", "python -m monai.bundle run --config_file bundles/dino_cxr/configs/train.json",
     "DINO, ViT-S/16, 2 global + 6 local crops, 5 epochs"),
    ("cxr_classifier:train", f"python -m monai.bundle run --config_file {C}/train.json "
                             "--init_weights bundles/simclr_cxr/models/backbone.pt",
     "fine-tuning from the SimCLR backbone, 10 epochs at 224 px: best model by validation AUC"),
    ("cxr_classifier:evaluate", f"python -m monai.bundle run --config_file \"['{C}/train.json','{C}/evaluate.json']\"",
     "test AUC with its 95% bootstrap CI, predictions per image"),
    ("cxr_classifier:inference", f"python -m monai.bundle run --config_file {C}/inference.json",
     "probabilities for new images (here the demo test list)"),
]


def copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="keys of the commands to time (default: all, in order)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quickstart_times.json"))
    args = p.parse_args()
    cpu = cpu_description()
    print("CPU:", json.dumps(cpu), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy_repo(Path(tmp))
        env = {**os.environ, "PYTHONWARNINGS": "ignore",
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        for key, cmd, what in COMMANDS:
            if args.only and key not in args.only and key.split(":")[0] not in args.only:
                continue
            t0 = time.monotonic()
            proc = subprocess.run(cmd, shell=True, cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.monotonic() - t0
            if proc.returncode != 0:
                sys.exit(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            rows.append({"key": key, "command": cmd, "what": what, "wall_s": round(wall, 1)})
            print(f"{key}: {wall:.0f} s  ({cmd})", flush=True)
    result = {"cpu": cpu, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# First-screen commands, bundle defaults, measured {result['date']}", "",
             f"CPU: {cpu.get('model', '?')}, {cpu['cpu_count']} cores, bf16 flags {cpu.get('bf16_flags', [])}, "
             f"`precision auto` -> {cpu['auto_precision']}", "",
             "| command | what you get | wall time |", "|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['what']} | {r['wall_s'] / 60:.1f} min |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
