"""monai_cxrssl: self-supervised pretraining for chest X-ray classification on MONAI.

Sub-packages, one concept each:

- :mod:`monai_cxrssl.data`: reading radiographs (DICOM, PNG/JPEG, NIfTI), CXR preprocessing,
  SSL views, datalists, patient-level splits, synthetic demo phantoms.
- :mod:`monai_cxrssl.networks`: backbones over MONAI networks and projection heads.
- :mod:`monai_cxrssl.losses`: contrastive and distillation losses.
- :mod:`monai_cxrssl.methods`: one module per SSL method (views -> embeddings -> loss).
- :mod:`monai_cxrssl.engines`: the SSL trainer on MONAI/Ignite engines and its handlers.
- :mod:`monai_cxrssl.bundle_checks`: checks of a ``monai.bundle run`` command line (unknown
  settings, values MONAI would rewrite) and the project's error shown last when a run fails.
"""

__version__ = "0.1.0"

_SUBPACKAGES = ("bundle_checks", "data", "distributed", "engines", "evaluation", "losses", "methods", "networks", "paths")


def __getattr__(name: str):
    """Import sub-packages on first use, so that ``"$import monai_cxrssl"`` in a bundle config gives
    ``monai_cxrssl.data.LoadCXRd`` etc. while the command line stays quick to start."""
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
