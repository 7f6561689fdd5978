"""MICLe (Azizi et al. 2021): SimCLR whose positive pair is two different images of one patient.

The method is SimCLR's (backbone, projection head, the one NT-Xent implementation); what
changes is the data: the second view is made from ``image_pair``, another radiograph of the same
patient drawn by :class:`~monai_cxrssl.data.MultiInstanceBatchSampler` (the image itself for a
patient with one image), through the view recipe :func:`~monai_cxrssl.data.pair_views` that the
bundle names. The sampler also keeps images of one patient out of each other's negatives.
"""

from __future__ import annotations

from monai_cxrssl.methods.simclr import SimCLR

__all__ = ["MICLe"]


class MICLe(SimCLR):
    """MICLe: SimCLR on multi-instance pairs (arguments as :class:`SimCLR`)."""

    name = "micle"
