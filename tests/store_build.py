"""Builds an image store of a folder of PNGs with a deliberately slow preprocessing, so that a test can kill it
half-way (``python tests/store_build.py IMAGES_DIR STORE_DIR``) and check that the next build resumes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from monai.transforms import Compose, MapTransform

from monai_cxrssl.data import LoadCXRd, ResizeCXRd, build_store


class SlowDown(MapTransform):
    """Waits ``seconds`` per image; it changes no pixel, so its speed is private (``_seconds``): the store's
    fingerprint of the preprocessing reads public settings only."""

    def __init__(self, keys="image", seconds: float = 0.01):
        super().__init__(keys)
        self._seconds = seconds

    def __call__(self, data):
        time.sleep(self._seconds)
        return data


def preprocessing(size: int = 16, seconds: float = 0.0) -> Compose:
    return Compose([LoadCXRd(keys="image"), ResizeCXRd(keys="image", size=size), SlowDown(seconds=seconds)])


def entries(images_dir: Path) -> list[dict]:
    return [{"image": str(p), "patient_id": p.stem.split("_")[0]} for p in sorted(Path(images_dir).glob("*.png"))]


if __name__ == "__main__":
    images, store = Path(sys.argv[1]), Path(sys.argv[2])
    build_store(entries(images), preprocessing(seconds=float(sys.argv[3]) if len(sys.argv) > 3 else 0.01), store,
                num_workers=1, progress=False)
