"""How fast radiographs come from a DICOMweb server and results go back: a local Orthanc (Debian's packages, as the
tests start it), QIDO-RS search and WADO-RS retrieval into the cache with 1 and 4 parallel retrievals and with
de-identification; then one DICOM Structured Report per image written and stored (STOW-RS).

    python benchmarks/dicomweb_retrieval.py --instances 500 --out benchmarks/results/dicomweb_retrieval.json

It generates ``--instances`` SYNTHETIC CR radiographs (``--size`` px, 16 bit, uncompressed, 5 per study, 2 studies
per patient), stores them in a fresh Orthanc on 127.0.0.1 (``tests/orthanc.py``), then for each worker count
builds the datalist into an empty cache (``monai_cxrssl.data.dicomweb.datalist_from_dicomweb``) and measures the
search and the retrieval: instances/s and MB/s; then once more with ``--deidentify``, with the most workers. For
``--reports`` of the images it writes the classifier's reports (``write_structured_reports``, 14 findings each, from
a stand-in model folder) and stores them (``store_instances``, 32 per request): milliseconds per report. Over
loopback this is the server's and the client's cost, not a network's. It writes the JSON and a Markdown table beside it, and prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tests/orthanc.py: the Orthanc the tests start

from machine import describe, write_results  # noqa: E402  (benchmarks/machine.py)


FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
            "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]


def _reports(server, images: list[Path], work: Path) -> dict:
    """Write one report per image from SYNTHETIC probabilities and a stand-in model folder, then store them."""
    import csv

    import numpy as np

    from monai_cxrssl.data.dicomweb import store_instances
    from monai_cxrssl.evaluation import write_structured_reports

    models = work / "model" / "models"
    models.mkdir(parents=True)
    (models / "model_info.json").write_text(json.dumps({"task": "multilabel", "classes": FINDINGS, "mode": "finetune",
                                                        "backbone": {"name": "resnet18"}, "image_size": 224}))
    (models / "model.pt").write_bytes(b"stand-in weights")
    probs = np.random.default_rng(0).random((len(images), len(FINDINGS)))
    with open(work / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id"] + [f"prob_{c}" for c in FINDINGS])
        w.writerows([str(p), ""] + [repr(float(v)) for v in row] for p, row in zip(images, probs))
    t0 = time.perf_counter()
    paths = write_structured_reports(work / "predictions.csv", models, work / "sr")
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = store_instances(server.dicomweb, paths)
    store_s = time.perf_counter() - t0
    assert stored == len(paths) == len(images)
    n = len(paths)
    return {"reports": n, "findings": len(FINDINGS), "processes": min(8, os.cpu_count() or 1, n),
            "write_s": round(write_s, 2), "store_s": round(store_s, 2),
            "write_ms_per_report": round(1000 * write_s / n, 1), "store_ms_per_report": round(1000 * store_s / n, 1),
            "kb_per_report": round(sum(p.stat().st_size for p in paths) / n / 1e3, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each radiograph")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reports", type=int, default=100, help="structured reports written and stored")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dicomweb_retrieval.json"))
    args = parser.parse_args(argv)
    from orthanc import Orthanc, write_cr
    from pydicom.uid import generate_uid

    from monai_cxrssl.data.dicomweb import datalist_from_dicomweb, find_instances

    machine = describe()
    print(f"CPU: {machine['cpu']}; flags: {' '.join(machine['flags'])}; {machine['cores']} cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    runs = []
    try:
        files, study, series = [], None, None
        for i in range(args.instances):
            if i % 5 == 0:
                study, series = generate_uid(), generate_uid()
            files.append(write_cr(work / "files" / f"{i:06d}.dcm", f"PAT{i // 10:05d}", study, series, seed=i,
                                  accession=f"ACC{i // 5:06d}", shape=(args.size, args.size)))
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        with Orthanc(work / "server") as server:
            t0 = time.perf_counter()
            for f in files:
                server.upload(f)
            upload_s = time.perf_counter() - t0
            print(f"{len(files)} instances ({size_mb:.0f} MB) stored in Orthanc in {upload_s:.1f} s", flush=True)
            os.environ.update(server.env)
            t0 = time.perf_counter()
            found, _ = find_instances(server.dicomweb)
            search_s = time.perf_counter() - t0
            assert len(found) == len(files), (len(found), len(files))
            for workers in args.workers:
                cache = work / f"cache_{workers}"
                t0 = time.perf_counter()
                datalist = datalist_from_dicomweb(server.dicomweb, cache, num_workers=workers, progress=True)
                total_s = time.perf_counter() - t0
                assert datalist["dicomweb"]["n_retrieved"] == len(files)
                runs.append({"instances": len(files), "size_px": args.size, "mb": round(size_mb, 1),
                             "workers": workers, "search_s": round(search_s, 3), "datalist_s": round(total_s, 2),
                             "instances_per_s": round(len(files) / total_s, 1), "mb_per_s": round(size_mb / total_s, 1)})
                print(json.dumps(runs[-1]), flush=True)
                shutil.rmtree(cache)
            workers = max(args.workers)
            cache = work / "cache_deid"
            t0 = time.perf_counter()
            datalist = datalist_from_dicomweb(server.dicomweb, cache, num_workers=workers, progress=True,
                                              deidentify=work / "mapping.json")
            total_s = time.perf_counter() - t0
            runs.append({"instances": len(files), "size_px": args.size, "mb": round(size_mb, 1), "workers": workers,
                         "deidentified": True, "search_s": round(search_s, 3), "datalist_s": round(total_s, 2),
                         "instances_per_s": round(len(files) / total_s, 1), "mb_per_s": round(size_mb / total_s, 1)})
            print(json.dumps(runs[-1]), flush=True)
            reports = _reports(server, [Path(e["image"]) for e in datalist["training"][:args.reports]], work)
            print(json.dumps(reports), flush=True)
            version = server.version()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": machine, "orthanc": version,
              "command": "python benchmarks/dicomweb_retrieval.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "runs": runs, "reports": reports}
    lines = [f"# DICOMweb retrieval from a local Orthanc {version} ({machine['cpu']}; flags: "
             f"{' '.join(machine['flags']) or 'none'}; {machine['cores']} cores)", "", f"`{result['command']}`", "",
             "SYNTHETIC CR radiographs, 16 bit, uncompressed; over loopback.", "",
             "| instances | px | MB | parallel retrievals | search s | search + retrieval + datalist s | instances/s | MB/s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['instances']} | {r['size_px']} | {r['mb']} | {r['workers']}{' (de-identified)' if r.get('deidentified') else ''} "
              f"| {r['search_s']} | {r['datalist_s']} | {r['instances_per_s']} | {r['mb_per_s']} |" for r in runs]
    lines += ["", f"Structured reports ({reports['findings']} findings each) for {reports['reports']} of the images: "
              f"written in {reports['processes']} processes in {reports['write_s']} s ({reports['write_ms_per_report']} ms each, "
              f"{reports['kb_per_report']} KB), stored (STOW-RS, 32 per request) in {reports['store_s']} s "
              f"({reports['store_ms_per_report']} ms each)."]
    write_results(result, args.out, "\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
