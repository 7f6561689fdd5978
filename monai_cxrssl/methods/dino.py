"""DINO (Caron et al., 2021): self-distillation with no labels, the method behind DINOv2.

A student (backbone + :class:`~monai_cxrssl.networks.DINOHead`) learns to match a teacher, an
exponential moving average of the student, across crops of one radiograph:

- views: 2 global crops (``scale`` 0.4-1) and ``n_local_crops`` smaller local crops
  (0.05-0.4), made by the trainer's :class:`~monai_cxrssl.data.ViewBatch` from the recipe
  :func:`~monai_cxrssl.data.multi_crop`;
- the teacher sees the 2 global crops; the student sees all of them, one backbone pass per
  crop size (crops of one size are concatenated), then one head pass;
- :class:`~monai_cxrssl.losses.DINOLoss`: cross-entropy between the centred, sharpened teacher
  and the student on every pair of different crops; the teacher temperature warms up, a schedule the method
  declares (:meth:`DINO.schedules`) and the run's schedule precomputes;
- after each optimiser step the teacher follows the student with a momentum that rises on a
  cosine from 0.996 to 1 over training (the momentum pairs of :class:`~monai_cxrssl.methods.SSLMethod`);
- downstream tasks start from the **teacher**'s backbone (:meth:`DINO.export_backbone`).

The student, the teacher and the loss's centre are all in the state dict: checkpoints resume
exactly. ``init_weights`` starts both networks from a checkpoint (this project's backbone export,
or a timm/DINOv2 ViT file: continuing SSL from DINOv2 on radiographs).
"""

from __future__ import annotations

import torch
from torch import nn

from monai_cxrssl.data.view_batch import local_crop_size  # (its home is the view recipes; kept importable here)
from monai_cxrssl.losses.dino import DINOLoss
from monai_cxrssl.methods.base import SSLMethod
from monai_cxrssl.networks.backbones import Backbone
from monai_cxrssl.networks.heads import DINOHead
from monai_cxrssl.ramps import Ramp

__all__ = ["DINO", "local_crop_size"]


class DINO(SSLMethod):
    """DINO.

    Args:
        backbone: the student's feature extractor (e.g. ``build_backbone("vit_small")``); the
            teacher is a copy of it.
        n_local_crops: local crops per image (DINO: 6 to 10; 0 gives two-crop DINO).
        out_dim: prototypes of the head (DINO: 65,536 on ImageNet; far fewer suit small data sets).
        hidden_dim: head MLP width (2048).
        bottleneck_dim: head bottleneck (256).
        head_layers: linear layers of the head before the prototypes (3).
        head_batch_norm: BatchNorm in the head (DINO uses it only for ResNets, optionally).
        norm_last_layer: fix the prototypes' norm at 1 (DINO's default, for stability).
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature after the warm-up (0.04-0.07).
        warmup_teacher_temp: teacher temperature at the start (0.04).
        warmup_teacher_temp_iterations: iterations of the linear teacher temperature warm-up.
        center_momentum: momentum of the loss's centre (0.9).
        momentum_start: teacher EMA momentum at the first step (0.996), rising on a cosine to
        momentum_end: its value at the end of training (1.0).
        init_weights: ``""``/``"random"``, or a file to initialise the backbone (student and teacher)
            with, as :func:`~monai_cxrssl.networks.init_backbone` reads it; what was loaded is kept
            in :attr:`init_report`.
    """

    name = "dino"

    def __init__(self, backbone: Backbone, n_local_crops: int = 6, out_dim: int = 4096, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, head_layers: int = 3, head_batch_norm: bool = False,
                 norm_last_layer: bool = True, student_temp: float = 0.1, teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_iterations: int = 0,
                 center_momentum: float = 0.9, momentum_start: float = 0.996, momentum_end: float = 1.0,
                 init_weights: str | None = "", init_strict: bool = True):
        super().__init__(backbone, init_weights, init_strict)  # before the teacher is copied from it
        if n_local_crops < 0:
            raise ValueError(f"n_local_crops must be >= 0, got {n_local_crops}")
        if not 0.0 <= momentum_start <= momentum_end <= 1.0:
            raise ValueError(f"expected 0 <= momentum_start <= momentum_end <= 1, got {momentum_start}, {momentum_end}")
        self.set_momentum(momentum_start, momentum_end, "cosine")
        self.n_local_crops = int(n_local_crops)
        self.num_views = 2 + self.n_local_crops
        self.head = DINOHead(backbone.out_dim, out_dim, hidden_dim, bottleneck_dim, head_layers,
                             batch_norm=head_batch_norm, norm_last_layer=norm_last_layer)
        self.add_momentum_pair("backbone", "teacher_backbone")
        self.add_momentum_pair("head", "teacher_head")
        for what, t in (("teacher_temp", teacher_temp), ("warmup_teacher_temp", warmup_teacher_temp)):
            if t <= 0:
                raise ValueError(f"{what} must be positive, got {t}")
        if int(warmup_teacher_temp_iterations) < 0:
            raise ValueError(f"warmup_teacher_temp_iterations must be >= 0, got {warmup_teacher_temp_iterations}")
        #: DINO's teacher temperature: ``linspace(warmup_teacher_temp, teacher_temp, warm-up)``, then constant
        self.teacher_temp_ramp = Ramp(float(teacher_temp), warmup_steps=int(warmup_teacher_temp_iterations),
                                      warmup_start=float(warmup_teacher_temp))
        first = self.teacher_temp_ramp.values(1)[0]
        self.criterion = DINOLoss(out_dim, self.num_views, student_temp=student_temp, teacher_temp=first,
                                  center_momentum=center_momentum)

    # ------------------------------------------------------------------------------ schedules
    def schedules(self) -> dict[str, Ramp]:
        """The teacher's EMA momentum and its temperature."""
        return {**super().schedules(), "teacher_temp": self.teacher_temp_ramp}

    def before_step(self, iteration: int, values) -> None:
        """This iteration's teacher temperature into the loss."""
        super().before_step(iteration, values)
        self.criterion.teacher_temp = float(values.get("teacher_temp", self.teacher_temp_ramp.final))

    # -------------------------------------------------------------------------------- forward
    @staticmethod
    def _by_size(views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Consecutive views of one spatial size, concatenated (one backbone pass each)."""
        groups: list[list[torch.Tensor]] = []
        for v in views:
            if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
                groups[-1].append(v)
            else:
                groups.append([v])
        return [torch.cat(g) if len(g) > 1 else g[0] for g in groups]

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != self.num_views:
            raise ValueError(f"DINO with {self.n_local_crops} local crops takes {self.num_views} views, "
                             f"got {len(views)}")
        if views[0].shape != views[1].shape:
            raise ValueError(f"the two global views must have one shape, got {tuple(views[0].shape)} and "
                             f"{tuple(views[1].shape)}")
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_backbone(torch.cat(views[:2])))
        features = torch.cat([self.backbone(group) for group in self._by_size(views)])
        student_out = self.head(features)
        loss = self.criterion(student_out, teacher_out)
        return {"loss": loss,
                "teacher_temp": torch.tensor(self.criterion.teacher_temp),
                "momentum": torch.tensor(self.momentum)}

    def export_backbone(self) -> nn.Module:
        """The teacher's backbone: DINO's evaluations (and downstream tasks) use the teacher."""
        return self.teacher_backbone
