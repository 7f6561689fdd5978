"""Run under ``torchrun`` on several (simulated) nodes: every process opens :class:`CXRStoreDataset` on the store
folder its node sees, for each folder of ``$NODE_STORE_DIRS`` (``:``-separated; one folder on shared storage, or
one per node as on node-local disks), and writes ``OUT/<case>/rank<R>.json`` (``<case>``: the folder's position)
with its store folder, image count and a digest of every record it read::

    torchrun --nnodes 2 ... tests/store_nodes.py IMAGES_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from store_build import entries, preprocessing

from monai_cxrssl import distributed as D
from monai_cxrssl.data import CXRStoreDataset

if __name__ == "__main__":
    images, out = Path(sys.argv[1]), Path(sys.argv[2])
    D.init_process_group(timeout_s=120)
    for case, store_dir in enumerate(os.environ["NODE_STORE_DIRS"].split(":")):
        ds = CXRStoreDataset(entries(images), preprocessing(), store_dir, num_workers=1, progress=False)
        digest = hashlib.sha256(b"".join(ds.store.read(i).tobytes() for i in range(len(ds)))).hexdigest()
        (out / str(case)).mkdir(parents=True, exist_ok=True)
        (out / str(case) / f"rank{D.get_rank()}.json").write_text(
            json.dumps({"store_dir": store_dir, "n": len(ds), "digest": digest}))
    D.destroy_process_group()
