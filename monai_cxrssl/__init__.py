"""monai_cxrssl: self-supervised pretraining for chest X-ray classification on MONAI.

Sub-packages, one concept each:

- :mod:`monai_cxrssl.data`: reading radiographs (DICOM, PNG/JPEG, NIfTI), CXR preprocessing,
  SSL views, datalists, patient-level splits, synthetic demo phantoms.
- :mod:`monai_cxrssl.networks`: backbones over MONAI networks and projection heads.
- :mod:`monai_cxrssl.losses`: contrastive and distillation losses.
- :mod:`monai_cxrssl.methods`: one module per SSL method (views -> embeddings -> loss).
- :mod:`monai_cxrssl.engines`: the SSL trainer on MONAI/Ignite engines and its handlers.
"""

__version__ = "0.1.0"

from . import data, engines, losses, methods, networks  # noqa: E402  (bundle configs use monai_cxrssl.<sub>.<name>)
