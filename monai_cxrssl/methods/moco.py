"""MoCo v2 (He et al. 2020; Chen et al. 2020), as MoCo-CXR (Sowrirajan et al. 2021) ran it on radiographs.

A query encoder (backbone + MLP head) embeds view 1; a key encoder, its momentum (EMA) copy,
embeds view 2; InfoNCE classifies each query's key among a queue of keys from earlier
batches. The queue gives many negatives at a small batch (MoCo-CXR trained on one GPU with
batches of 16-24), which is the point of MoCo for CXR work. Per step:

1. ``q = head(backbone(view1))``; ``k = key_head(key_backbone(view2))`` without gradients,
   on a shuffled batch (below);
2. ``loss = InfoNCE(q, k, queue)``: one direction, query from view 1, key from view 2, as in
   MoCo v2 and MoCo-CXR (a symmetric loss would double the encoder passes);
3. the normalised keys of the whole global batch (``batch_size`` x processes, gathered) are
   written into the queue, oldest first, with wrap-around: the queue size need not be a
   multiple of the batch. Only in training mode;
4. after the optimiser step, ``key = m * key + (1 - m) * query`` (parameters only: the key
   encoder's BatchNorm statistics come from its own key batches, see
   :func:`~monai_cxrssl.networks.momentum.update_momentum`), with ``m`` constant (0.999) or on
   a cosine ramp to 1 over training: the momentum pairs of :class:`~monai_cxrssl.methods.SSLMethod`.

**Shuffle-BN.** With BatchNorm, a key computed over the same batch composition as its query
can cheat: the batch statistics leak which samples belong together, and the loss falls
without learning (MoCo, section 3.3). MoCo shuffles the batch across GPUs for the key
encoder. Here the *global* batch (gathered from every process) is permuted by a
:class:`torch.Generator` seeded by ``(seed, iteration)``, identical on every process without
communication; it is cut into ``world_size x key_splits`` chunks, each encoded in its own
forward pass (so each BatchNorm batch is a random subset of the global batch), and the keys
are put back in order. Process ``r`` encodes chunks ``r * key_splits ... (r + 1) * key_splits - 1``;
the keys are gathered and unshuffled, and each process keeps its own slice. A single process
encodes ``key_splits`` chunks (default 2), so the leak is closed without several GPUs. The
chunks depend only on the global batch, the permutation and ``world_size x key_splits``:
2 processes with batch B and ``key_splits=1`` compute exactly the keys of 1 process with batch
2B and ``key_splits=2``. :func:`shuffle_chunks`, :func:`encode_shuffled` and :func:`unshuffle`
are the pure parts, testable in one process by simulating ranks.

The queue is a :class:`~monai_cxrssl.networks.MemoryBank` (``(K, D)`` normalised keys and a pointer, as
buffers) and the key encoder a submodule, so checkpoints save and resume them. Under
``DistributedDataParallel`` every process enqueues the same gathered keys, so the queues stay equal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from monai_cxrssl.distributed import gather_no_grad, get_rank, get_world_size
from monai_cxrssl.losses.infonce import InfoNCELoss
from monai_cxrssl.methods.base import SSLMethod
from monai_cxrssl.networks.backbones import Backbone
from monai_cxrssl.networks.heads import ProjectionHead
from monai_cxrssl.networks.memory_bank import MemoryBank

__all__ = ["MoCo", "queue_size_for", "shuffle_permutation", "shuffle_chunks", "encode_shuffled", "unshuffle"]

#: separates the shuffle's random stream from the views' ((seed, rank, iteration) in the trainer)
_SHUFFLE_STREAM = 0x5348_4246  # "SHBF"


def shuffle_permutation(n: int, seed: int, iteration: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The permutation of a global batch of ``n`` for the key encoder at ``iteration``.

    Drawn on the CPU from ``(seed, iteration)`` only, so every process (and a resumed run) gets
    the same one without communication.
    """
    state = np.random.SeedSequence([int(seed), int(iteration), _SHUFFLE_STREAM]).generate_state(1)
    gen = torch.Generator().manual_seed(int(state[0]))
    return torch.randperm(n, generator=gen).to(device)


def shuffle_chunks(perm: torch.Tensor, rank: int, world_size: int, key_splits: int) -> list[torch.Tensor]:
    """Indices (into the global batch) of the chunks process ``rank`` encodes, one forward pass each.

    The permuted global batch ``perm`` is cut into ``world_size`` equal slices, one per process,
    and each slice into ``key_splits`` chunks (sizes differ by at most one).
    """
    n = perm.shape[0]
    if world_size < 1 or not 0 <= rank < world_size or n % world_size:
        raise ValueError(f"a global batch of {n} does not split over {world_size} process(es) (rank {rank})")
    if key_splits < 1:
        raise ValueError(f"key_splits must be >= 1, got {key_splits}")
    b = n // world_size
    return list(perm[rank * b:(rank + 1) * b].tensor_split(key_splits))


def encode_shuffled(encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, perm: torch.Tensor,
                    rank: int = 0, world_size: int = 1, key_splits: int = 2) -> torch.Tensor:
    """Process ``rank``'s share of the keys of the permuted global batch.

    Args:
        encoder: the key encoder (in training mode: BatchNorm uses each chunk's statistics).
        images: the global batch (every process's images, in rank order).
        perm: from :func:`shuffle_permutation` (``len(images)`` long).
        rank, world_size: this process and the number of processes.
        key_splits: chunks per process, each encoded in its own forward pass.

    Returns:
        The keys of ``images[perm[rank * B:(rank + 1) * B]]`` in that (permuted) order, where
        ``B = len(images) // world_size``. Concatenated over ranks (a gather) and passed to
        :func:`unshuffle`, they are the keys of ``images`` in its own order.
    """
    if images.shape[0] != perm.shape[0]:
        raise ValueError(f"the permutation has {perm.shape[0]} entries, the global batch {images.shape[0]} images")
    chunks = shuffle_chunks(perm, rank, world_size, key_splits)
    small = min(len(c) for c in chunks)
    if small < 2:
        raise ValueError(f"key_splits={key_splits} cuts the per-process batch of {images.shape[0] // world_size} "
                         f"into chunks of {small} image(s); BatchNorm needs at least 2 per chunk: lower key_splits "
                         f"or raise batch_size")
    return torch.cat([encoder(images[c]) for c in chunks])


def unshuffle(keys: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Undo the permutation: ``keys[j]`` belongs to image ``perm[j]``; returns them in image order."""
    if keys.shape[0] != perm.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys for a permutation of {perm.shape[0]}")
    out = torch.empty_like(keys)
    out[perm] = keys
    return out


def queue_size_for(n_images: int, batch_size: int, fraction: float = 0.25, minimum: int = 256,
                   maximum: int = 65536) -> int:
    """A MoCo queue sized to the data: about ``fraction`` of ``n_images`` keys, a multiple of ``batch_size``.

    The queue's negatives should be recent keys of *other* images. MoCo-CXR's 24,576 keys were about 11% of
    CheXpert; on a few thousand radiographs a fixed 4,096 would hold most of an epoch, so that an image's own
    stale key sits among its negatives. The small-data recipes use a quarter of the dataset, at least
    ``minimum`` (and one batch), at most ``maximum``.

    Args:
        n_images: training images (or pairs) per epoch, all processes together.
        batch_size: the global batch; the queue is a whole number of batches.
        fraction: share of the dataset the queue holds.
        minimum: smallest queue.
        maximum: largest queue.
    """
    if int(n_images) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_images and batch_size must be >= 1, got {n_images} and {batch_size}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    size = min(int(maximum), max(int(minimum), int(fraction * int(n_images))))
    b = int(batch_size)
    return max(b, size // b * b)


class MoCo(SSLMethod):
    """MoCo v2 with a queue of negatives and shuffle-BN.

    Args:
        backbone: feature extractor (e.g. ``build_backbone("resnet18")``); the query backbone is
            what :meth:`export_backbone` returns.
        hidden_dim: projection head width; default the backbone's feature size (MoCo v2's head
            is ``Linear(f, f) -> ReLU -> Linear(f, 128)``).
        out_dim: embedding dimension (128 in MoCo v2 and MoCo-CXR).
        head_batch_norm: BatchNorm in the head (MoCo v2: none).
        temperature: InfoNCE temperature (MoCo-CXR: 0.2).
        queue_size: number of negative keys kept, ``K``. MoCo-CXR used 24,576 on ~224k CheXpert
            images; on a few thousand images a queue that size would hold several epochs of stale
            keys (the bundle uses 4,096).
        momentum: EMA momentum ``m`` of the key encoder (0.999), or its start value for
            ``momentum_schedule="cosine"``.
        momentum_schedule: ``"constant"``, or ``"cosine"``: ``m`` rises from ``momentum`` at the
            first step to 1 at the end of training (as BYOL and DINO).
        key_splits: chunks per process for shuffle-BN (see the module docstring); 1 turns the
            shuffle off in a single process.
        seed: seed of the shuffle permutation (with the iteration).
        init_weights: initial backbone weights (two-stage pretraining), copied into the key encoder
            too; see :class:`SSLMethod`.
    """

    name = "moco"
    num_views = 2

    def __init__(self, backbone: Backbone, hidden_dim: int | None = None, out_dim: int = 128,
                 head_batch_norm: bool = False, temperature: float = 0.2, queue_size: int = 4096,
                 momentum: float = 0.999, momentum_schedule: str = "constant", key_splits: int = 2, seed: int = 0,
                 init_weights: str | None = "", init_strict: bool = True):
        super().__init__(backbone, init_weights, init_strict)  # before the key encoder is copied from it
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1 (the number of negative keys kept), got {queue_size}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (MoCo: 0.999), got {momentum}")
        if int(key_splits) < 1:
            raise ValueError(f"key_splits must be >= 1 (chunks per process for shuffle-BN), got {key_splits}")
        if int(out_dim) < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        self.set_momentum(momentum, 1.0, momentum_schedule)
        hidden_dim = backbone.out_dim if hidden_dim is None else int(hidden_dim)
        self.head = ProjectionHead(backbone.out_dim, hidden_dim, int(out_dim), num_layers=2,
                                   batch_norm=bool(head_batch_norm))
        self.add_momentum_pair("backbone", "key_backbone")
        self.add_momentum_pair("head", "key_head")
        self.criterion = InfoNCELoss(temperature)
        self.key_splits = int(key_splits)
        self.seed = int(seed)
        self.memory = MemoryBank(int(queue_size), int(out_dim))

    # ------------------------------------------------------------------------------- keys
    def _key_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_head(self.key_backbone(x))

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys of this process's batch ``x`` and of the global batch, via shuffle-BN."""
        rank, world = get_rank(), get_world_size()
        x_all = gather_no_grad(x)
        perm = shuffle_permutation(x_all.shape[0], self.seed, self._iteration, x.device)
        share = encode_shuffled(self._key_encoder, x_all, perm, rank, world, self.key_splits)
        k_all = F.normalize(unshuffle(gather_no_grad(share), perm).float(), dim=1)
        b = x.shape[0]
        return k_all[rank * b:(rank + 1) * b], k_all

    # ------------------------------------------------------------------------------ forward
    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"MoCo takes 2 views (query, key), got {len(views)}")
        v1, v2 = views
        q = self.head(self.backbone(v1))
        k, k_all = self.encode_keys(v2)
        # a copy: the loss keeps the queue for backward, and the enqueue below writes into it
        loss = self.criterion(q, k, self.memory.keys.clone())
        if self.training:
            self.memory.enqueue(k_all)
        return {"loss": loss, "momentum": torch.tensor(self.momentum, device=loss.device)}
