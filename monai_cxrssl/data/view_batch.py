"""From a batch of preprocessed radiographs to network inputs: one object for SSL and classifier alike.

:class:`ViewBatch` is the ``prepare_batch`` of every engine in this package (the SSL trainer, MONAI's
``SupervisedTrainer`` and ``SupervisedEvaluator`` of the classifier, the embedding and feature passes). It

- maps batch keys to views: each :class:`View` names its source key and its augmentation (``None``: the image as
  it is), so MICLe's second view of another image of the same patient is a view whose source is ``image_pair``;
- augments the whole batch on the training device (:class:`~monai_cxrssl.data.CXRViewAugment`);
- normalises once, here, with :data:`~monai_cxrssl.data.views.PIXEL_MEAN` / ``PIXEL_STD``: every view, every
  classifier batch and every embedding pass;
- seeds the augmentation from ``(seed, rank, iteration)``, the engine's iteration (it is an Ignite handler:
  :meth:`ViewBatch.attach` follows the engine's iteration), so a run resumed from a checkpoint sees exactly the
  views the uninterrupted run would have seen, and two processes draw different views of their shards.

Named recipes say what a method needs, in place of view lists written out in JSON:

- :func:`two_views`: SimCLR, MoCo, BYOL (two views of each image);
- :func:`pair_views`: MICLe (one view of each image, one of another image of the same patient);
- :func:`multi_crop`: DINO (two global crops and ``local_crops`` small local crops);
- :func:`single_view`: the classifier's training augmentation; no views at all: evaluation (normalise only).

``RECIPES`` lists them by name (``view_recipe(name, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monai_cxrssl.data.views import PIXEL_MEAN, PIXEL_STD, CXRViewAugment
from monai_cxrssl.distributed import get_rank

__all__ = ["View", "ViewBatch", "FollowIteration", "two_views", "pair_views", "multi_crop", "single_view", "local_crop_size",
           "view_recipe", "RECIPES", "normalize"]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """The network input of images in [0, 1]: ``(x - PIXEL_MEAN) / PIXEL_STD``, in float32."""
    return (images.float() - PIXEL_MEAN) / PIXEL_STD


@dataclass(frozen=True)
class View:
    """One network input made from a batch.

    Args:
        augment: the random augmentation (a :class:`~monai_cxrssl.data.CXRViewAugment`), or ``None`` for the image
            as it is.
        source: the batch key of the image the view is made from.
    """

    augment: CXRViewAugment | None = None
    source: str = "image"

    @property
    def out_size(self) -> int | None:
        """The view's side in pixels (``None``: the image's own)."""
        return None if self.augment is None else self.augment.out_size


# ------------------------------------------------------------------------------------ recipes
def two_views(size: int, source: str = "image", **augment) -> list[View]:
    """SimCLR's, MoCo's and BYOL's views: two independent augmentations of each image.

    Args:
        size: side of the views (pixels).
        source: the batch key of the images.
        augment: further :class:`~monai_cxrssl.data.CXRViewAugment` settings (e.g. MoCo v2's ``blur_prob=0``).
    """
    aug = CXRViewAugment(out_size=size, **augment)
    return [View(aug, source), View(aug, source)]


def pair_views(size: int, source: str = "image", pair_key: str = "image_pair", **augment) -> list[View]:
    """MICLe's views: one augmentation of each image and one of its partner, another image of the same patient
    (``pair_key``, written by :class:`~monai_cxrssl.data.MultiInstancePairs`)."""
    aug = CXRViewAugment(out_size=size, **augment)
    return [View(aug, source), View(aug, pair_key)]


def local_crop_size(image_size: int, ratio: float = 96 / 224, multiple: int = 16) -> int:
    """DINO's local crop size for global crops of ``image_size``: the paper's 96/224 ratio, rounded to ``multiple``.

    224 -> 96 (the paper), 128 -> 48, 64 -> 32; at least ``multiple``.
    """
    if int(image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    m = int(multiple)
    return max(m, int(round(float(ratio) * int(image_size) / m)) * m)


def multi_crop(size: int, local_crops: int = 6, local_size: int | None = None,
               global_scale: Sequence[float] = (0.4, 1.0), local_scale: Sequence[float] = (0.05, 0.4),
               source: str = "image", **augment) -> list[View]:
    """DINO's multi-crop: two global crops of ``size`` (``global_scale`` of the image; Gaussian blur always on the
    first, with probability 0.1 on the second) and ``local_crops`` local crops of ``local_size`` (``local_scale``;
    blur with probability 0.5), as in DINO's ``DataAugmentationDINO``.

    Args:
        size: side of the global crops.
        local_crops: number of local crops (0: two-crop DINO).
        local_size: side of the local crops (default :func:`local_crop_size` of ``size``: 96 at 224).
        global_scale, local_scale: the crops' area as a fraction of the image.
        source: the batch key of the images.
        augment: further :class:`~monai_cxrssl.data.CXRViewAugment` settings for every crop.
    """
    if int(local_crops) < 0:
        raise ValueError(f"local_crops must be >= 0, got {local_crops}")
    local_size = local_crop_size(size) if local_size is None else int(local_size)
    augment = {k: v for k, v in augment.items() if k != "blur_prob"}
    views = [View(CXRViewAugment(out_size=size, scale=global_scale, blur_prob=1.0, **augment), source),
             View(CXRViewAugment(out_size=size, scale=global_scale, blur_prob=0.1, **augment), source)]
    local = CXRViewAugment(out_size=local_size, scale=local_scale, blur_prob=0.5, **augment)
    return views + [View(local, source)] * int(local_crops)


def single_view(size: int, source: str = "image", **augment) -> list[View]:
    """One augmentation of each image: the classifier's training augmentation when it is on."""
    return [View(CXRViewAugment(out_size=size, **augment), source)]


#: the named recipes
RECIPES: dict[str, Callable[..., list[View]]] = {"two_views": two_views, "pair_views": pair_views,
                                                  "multi_crop": multi_crop, "single_view": single_view}


def view_recipe(name: str, size: int, **kwargs) -> list[View]:
    """The recipe ``name`` (one of :data:`RECIPES`) at ``size``."""
    if name not in RECIPES:
        raise ValueError(f"unknown view recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name](size, **kwargs)


# ------------------------------------------------------------------------------ batch preparation
class ViewBatch:
    """``prepare_batch`` for MONAI engines: a batch's views (normalised, on the device) and its targets.

    Args:
        views: the views to make: a list of :class:`View` (a recipe), one :class:`View`, or a
            :class:`~monai_cxrssl.data.CXRViewAugment` (one view of ``image_key``), or a list of them (one view each,
            all of ``image_key``). ``None`` or an empty list: one view, the image as it is (evaluation).
        seed: seed of the augmentation; each batch draws from ``(seed, rank, iteration)``.
        image_key: the source of views given as augmentations.
        target_key: the batch key of the targets (``None`` when a batch has none).

    Called as MONAI's ``prepare_batch(batchdata, device, non_blocking)``, it returns ``(inputs, targets)``: the one
    view's tensor when there is one view, else the list of views. Precomputed features ``(B, D)`` (linear probing)
    pass through unchanged. The iteration comes from ``iteration=`` (the SSL trainer passes its own), or from the
    engine it is attached to (:meth:`attach`; the classifier's trainer, through :class:`FollowIteration`).
    """

    def __init__(self, views: Sequence[View | CXRViewAugment] | View | CXRViewAugment | None = None, seed: int = 0,
                 image_key: str = "image", target_key: str | None = "target"):
        if views is None:
            views = []
        elif isinstance(views, (View, CXRViewAugment)):
            views = [views]
        self.views: list[View] = [v if isinstance(v, View) else _as_view(v, image_key) for v in views] \
            or [View(None, image_key)]
        self.seed = int(seed)
        self.image_key, self.target_key = image_key, target_key
        #: the engine iteration the next batch is drawn for (set by :meth:`attach`'s handler)
        self.iteration: int | None = None

    @property
    def augments(self) -> bool:
        """Whether any view is random."""
        return any(v.augment is not None for v in self.views)

    @property
    def out_sizes(self) -> set[int]:
        """The sides of the random views."""
        return {v.out_size for v in self.views if v.out_size is not None}

    def attach(self, engine) -> None:
        """Follow ``engine``'s iteration (an Ignite handler on ``ITERATION_STARTED``)."""
        from ignite.engine import Events

        if not engine.has_event_handler(self._follow, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self._follow)

    def _follow(self, engine) -> None:
        self.iteration = int(engine.state.iteration)

    def generators(self, iteration: int, device) -> tuple[np.random.RandomState, torch.Generator]:
        """The random states of ``iteration``'s views in this process: parameters, and the noise on ``device``."""
        s = np.random.SeedSequence([self.seed, get_rank(), int(iteration)]).generate_state(2)
        return np.random.RandomState(int(s[0])), torch.Generator(device=device).manual_seed(int(s[1]))

    def make_views(self, batchdata: Mapping, device=None, non_blocking: bool = False,
                   iteration: int | None = None) -> list[torch.Tensor]:
        """Every view of the batch, normalised, on ``device``."""
        sources = {v.source: _images(batchdata, v.source, device, non_blocking) for v in self.views}
        if any(x.ndim == 2 for x in sources.values()):  # precomputed features: nothing to augment or normalise
            return [sources[v.source] for v in self.views]
        if not self.augments:
            return [normalize(sources[v.source]) for v in self.views]
        iteration = self.iteration if iteration is None else iteration
        if iteration is None:
            raise RuntimeError("ViewBatch draws random views per engine iteration: attach it to the trainer "
                               "(view_batch.attach(trainer), or FollowIteration(view_batch) in its handlers) or pass iteration=")
        rng, gen = self.generators(iteration, next(iter(sources.values())).device)
        return [normalize(sources[v.source] if v.augment is None else v.augment(sources[v.source], rng, gen))
                for v in self.views]

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, iteration: int | None = None,
                 **kwargs):
        views = self.make_views(batchdata, device, non_blocking, iteration)
        y = batchdata.get(self.target_key) if self.target_key else None
        return (views[0] if len(views) == 1 else views,
                None if y is None else torch.as_tensor(y).to(device, non_blocking=non_blocking))

    # the iteration is the engine's, saved with it: nothing of its own to checkpoint
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        """Accepts the empty state, and the call counter that classifier checkpoints of ``cxr_classifier`` 0.5 hold
        (its ``ClassificationBatch`` counted calls; the engine's iteration replaces it)."""


class FollowIteration:
    """The Ignite handler that makes ``view_batch`` follow the engine it is attached to (:meth:`ViewBatch.attach`),
    for configs whose handler lists hold handler definitions only (MONAI's ``check_properties`` reads them)::

        {"_target_": "monai_cxrssl.data.FollowIteration", "view_batch": "@train#prepare_batch"}
    """

    def __init__(self, view_batch: ViewBatch):
        if not isinstance(view_batch, ViewBatch):
            raise TypeError(f"FollowIteration takes a ViewBatch, got {type(view_batch).__name__}")
        self.view_batch = view_batch

    def attach(self, engine) -> None:
        self.view_batch.attach(engine)


def _as_view(augment, image_key: str) -> View:
    if augment is not None and not isinstance(augment, CXRViewAugment):
        raise TypeError(f"a view is a monai_cxrssl.data.View or a CXRViewAugment, got {type(augment).__name__}")
    return View(augment, image_key)


def _images(batchdata: Mapping, key: str, device, non_blocking: bool) -> torch.Tensor:
    if key not in batchdata:
        raise KeyError(f"batch has no '{key}' key; keys are {sorted(batchdata)}")
    x = torch.as_tensor(batchdata[key]).to(device, non_blocking=non_blocking)
    if x.ndim not in (2, 4):
        raise ValueError(f"expected a batch of images (B, C, H, W) or features (B, D) under '{key}', "
                         f"got {tuple(x.shape)}")
    return x
