"""SSL views: chest-X-ray-appropriate random augmentations, batched or per sample.

One implementation serves both paths, so they are equal in distribution by construction:

- :class:`CXRViewAugment` samples per-image parameters with a NumPy random state
  (:meth:`CXRViewAugment.sample`) and applies them to a whole batch at once on its device
  (:meth:`CXRViewAugment.apply`): one ``affine_grid``/``grid_sample`` for random resized
  crop + horizontal flip + rotation, then brightness/contrast/gamma, Gaussian blur (grouped
  convolution with per-image kernels) and Gaussian noise. The views stay in the image's range; the network
  input's normalisation is done once, by :class:`~monai_cxrssl.data.ViewBatch`, for views and plain images alike.
- :class:`RandCXRView` / :class:`RandCXRViewd` are the MONAI array/dictionary transforms
  that apply it to one image, e.g. in DataLoader workers; :class:`RandCXRViewd` writes
  several views, each drawn from its own random state.

Defaults follow the CXR studies (see RECIPES): horizontal flip, rotations of at most
10 degrees, mild intensity changes, blur and noise; no colour jitter (radiographs are grey).
Input images are expected in [0, 1] (air dark), shaped ``(B, 1, H, W)`` for the batch path.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

__all__ = ["CXRViewAugment", "RandCXRView", "RandCXRViewd", "PIXEL_MEAN", "PIXEL_STD"]

#: The network input's normalisation, ``(x - PIXEL_MEAN) / PIXEL_STD`` of an image in [0, 1]: every view, every
#: classifier batch and every embedding pass uses these (imported ImageNet weights included, see ``networks``).
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


class CXRViewAugment:
    """Random augmentation of radiographs into SSL views.

    Args:
        out_size: side of the square output view (pixels).
        scale: range of the crop's area as a fraction of the image (random resized crop).
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_prob: probability of a horizontal flip.
        rotate_deg: maximum absolute rotation in degrees.
        brightness: maximum absolute additive brightness change (image range is [0, 1]).
        contrast: maximum relative contrast change about the image mean (0.2: factor 0.8-1.2).
        gamma: maximum gamma deviation; gamma is log-uniform in [1/(1+g), 1+g].
        intensity_prob: probability of applying brightness/contrast/gamma to an image.
        blur_prob: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation, as a fraction of ``out_size``.
        noise_prob: probability of additive Gaussian noise.
        noise_std: maximum noise standard deviation (image range [0, 1]).
    """

    def __init__(
        self,
        out_size: int = 224,
        scale: Sequence[float] = (0.3, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        rotate_deg: float = 10.0,
        brightness: float = 0.1,
        contrast: float = 0.2,
        gamma: float = 0.2,
        intensity_prob: float = 0.8,
        blur_prob: float = 0.5,
        blur_sigma: Sequence[float] = (0.001, 0.01),
        noise_prob: float = 0.5,
        noise_std: float = 0.03,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        self.out_size = int(out_size)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.flip_prob = float(flip_prob)
        self.rotate_deg = float(rotate_deg)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.gamma = float(gamma)
        self.intensity_prob = float(intensity_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = tuple(float(s) for s in blur_sigma)
        self.noise_prob = float(noise_prob)
        self.noise_std = float(noise_std)

    # ----------------------------------------------------------------------------- sampling
    def sample(self, n: int, rng: np.random.RandomState) -> dict[str, np.ndarray]:
        """Draw the parameters of ``n`` views (one row per image), all as float32 arrays."""
        area = rng.uniform(self.scale[0], self.scale[1], n)
        log_r = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), n)
        aspect = np.exp(log_r)
        # crop width/height as fractions of the image side; clipped inside the image
        w = np.minimum(np.sqrt(area * aspect), 1.0)
        h = np.minimum(np.sqrt(area / aspect), 1.0)
        # crop centre in normalised coordinates [-1, 1], so that the crop stays inside
        cx = rng.uniform(-1.0, 1.0, n) * (1.0 - w)
        cy = rng.uniform(-1.0, 1.0, n) * (1.0 - h)
        flip = rng.uniform(size=n) < self.flip_prob
        angle = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg, n))
        do_int = rng.uniform(size=n) < self.intensity_prob
        bright = np.where(do_int, rng.uniform(-self.brightness, self.brightness, n), 0.0)
        contr = np.where(do_int, rng.uniform(1 - self.contrast, 1 + self.contrast, n), 1.0)
        g = math.log1p(self.gamma)
        gam = np.where(do_int, np.exp(rng.uniform(-g, g, n)), 1.0)
        sigma = np.where(rng.uniform(size=n) < self.blur_prob,
                         rng.uniform(self.blur_sigma[0], self.blur_sigma[1], n) * self.out_size, 0.0)
        noise = np.where(rng.uniform(size=n) < self.noise_prob, rng.uniform(0, self.noise_std, n), 0.0)
        p = {"w": w, "h": h, "cx": cx, "cy": cy, "flip": flip, "angle": angle, "brightness": bright,
             "contrast": contr, "gamma": gam, "sigma": sigma, "noise": noise}
        return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}

    # ----------------------------------------------------------------------------- applying
    def apply(self, images: torch.Tensor, params: Mapping[str, np.ndarray],
              noise_generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply sampled parameters to a batch ``(B, C, H, W)`` in [0, 1]; returns the views (not normalised).

        Args:
            images: the batch, on any device.
            params: from :meth:`sample` with ``n == B``.
            noise_generator: generator for the Gaussian noise (on ``images.device``); the global
                generator when omitted.
        """
        if images.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
        b = images.shape[0]
        dev = images.device
        x = images.float()
        t = {k: torch.as_tensor(v, device=dev) for k, v in params.items()}
        if t["w"].shape[0] != b:
            raise ValueError(f"params are for {t['w'].shape[0]} images, the batch has {b}")

        # geometry: output grid -> (flip) -> rotate -> scale to crop -> shift to crop centre
        cos, sin = torch.cos(t["angle"]), torch.sin(t["angle"])
        sx = t["w"] * torch.where(t["flip"] > 0, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin * t["h"]
        theta[:, 1, 0] = sin * sx
        theta[:, 1, 1] = cos * t["h"]
        theta[:, 0, 2] = t["cx"]
        theta[:, 1, 2] = t["cy"]
        size = self.out_size
        grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
        # antialias when the crop is much larger than the output: pre-shrink the source
        src_side = min(x.shape[-2:])
        if src_side > 2 * size:
            x = F.interpolate(x, scale_factor=(2 * size) / src_side, mode="area")
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # intensity: contrast about each image's mean, brightness, gamma
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * t["contrast"].view(b, 1, 1, 1) + mean + t["brightness"].view(b, 1, 1, 1)
        x = x.clamp(0.0, 1.0).pow(t["gamma"].view(b, 1, 1, 1))

        x = _gaussian_blur(x, t["sigma"])
        if bool((t["noise"] > 0).any()):
            eps = torch.randn(x.shape, generator=noise_generator, device=dev, dtype=x.dtype)
            x = x + eps * t["noise"].view(b, 1, 1, 1)
        return x

    def __call__(self, images: torch.Tensor, rng: np.random.RandomState,
                 noise_generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample with ``rng`` and apply to the batch: one view per image."""
        return self.apply(images, self.sample(images.shape[0], rng), noise_generator)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one standard deviation per image (0 leaves it unchanged)."""
    if not bool((sigma > 0).any()):
        return x
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    offs = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp_min(1e-6).view(b, 1)
    k = torch.exp(-0.5 * (offs.view(1, -1) / s) ** 2)
    k = torch.where((sigma > 0).view(b, 1), k, (offs == 0).to(x.dtype).view(1, -1).expand(b, -1))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


class RandCXRView(Randomizable, Transform):
    """One random SSL view of one image ``(C, H, W)`` in [0, 1] (array transform); not normalised.

    Args:
        augment: the augmentation (a :class:`CXRViewAugment`), or keyword arguments for one.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, augment: CXRViewAugment | None = None, **kwargs):
        self.augment = augment if augment is not None else CXRViewAugment(**kwargs)
        self._params: dict | None = None

    def randomize(self, data=None) -> None:
        self._params = self.augment.sample(1, self.R)

    def __call__(self, img, randomize: bool = True) -> torch.Tensor:
        if randomize or self._params is None:
            self.randomize()
        x = torch.as_tensor(img)
        if x.ndim != 3:
            raise ValueError(f"expected an image (C, H, W), got shape {tuple(x.shape)}")
        gen = torch.Generator(device=x.device).manual_seed(int(self.R.randint(0, 2**31 - 1)))
        return self.augment.apply(x.unsqueeze(0), self._params, gen)[0]


class RandCXRViewd(Randomizable, MapTransform):
    """Dictionary transform writing several independently augmented views of one image.

    Each view key gets its own :class:`RandCXRView` with its own random state, derived from
    this transform's state (``set_random_state`` reseeds them all reproducibly).

    Args:
        keys: the image key (exactly one).
        view_keys: output keys, one per view (two for SimCLR).
        augment: a :class:`CXRViewAugment`, or ``kwargs`` for one.
        allow_missing_keys: as in MONAI.
    """

    def __init__(self, keys: KeysCollection = "image", view_keys: Sequence[str] = ("view1", "view2"),
                 augment: CXRViewAugment | None = None, allow_missing_keys: bool = False, **kwargs):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandCXRViewd takes one image key, got {self.keys}")
        augment = augment if augment is not None else CXRViewAugment(**kwargs)
        self.view_keys = list(view_keys)
        self.views = [RandCXRView(augment) for _ in self.view_keys]
        self.set_random_state(seed=0)

    def set_random_state(self, seed=None, state=None) -> RandCXRViewd:
        super().set_random_state(seed, state)
        for v in self.views:
            v.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        return self

    def randomize(self, data=None) -> None:
        for v in self.views:
            v.randomize()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            for vk, view in zip(self.view_keys, self.views):
                d[vk] = view(d[key])
        return d
