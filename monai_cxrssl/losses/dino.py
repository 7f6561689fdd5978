"""The DINO self-distillation loss (Caron et al., 2021): teacher-centred, sharpened cross-entropy.

For teacher outputs ``t`` on the 2 global crops and student outputs ``s`` on all crops::

    P_t = softmax((t - c) / T_teacher)        centred and sharpened; no gradient
    P_s = log_softmax(s / T_student)
    loss = mean over pairs (teacher crop i, student crop v), v != i, of  -sum_k P_t[k] log P_s[k]

Centring (subtracting ``c``, an EMA of the teacher's batch mean) keeps one prototype from
dominating; sharpening (``T_teacher`` < ``T_student``) keeps the teacher from going uniform. Both
together avoid collapse. ``T_teacher`` is the loss's :attr:`DINOLoss.teacher_temp`; its warm-up (DINO: 0.04 ->
0.07 over 30 epochs) is a schedule that :class:`~monai_cxrssl.methods.DINO` declares and the run's schedule
precomputes per iteration, which the method sets here before each step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from monai_cxrssl.distributed import get_world_size, is_distributed

__all__ = ["DINOLoss"]


class DINOLoss(nn.Module):
    """DINO's cross-entropy between the centred, sharpened teacher and the student.

    The centre is a buffer (saved with checkpoints), updated after each loss computation in
    training mode with ``c = m * c + (1 - m) * mean(teacher outputs)``, the mean taken over the
    teacher outputs of every process. The loss is computed in float32 whatever the autocast
    precision.

    Args:
        out_dim: number of prototypes (the head's output dimension).
        n_crops: crops per image the student sees (2 global + local ones).
        student_temp: student softmax temperature (0.1).
        teacher_temp: the teacher temperature in use (0.04-0.07; DINO's default 0.04, 0.07 for longer runs),
            :attr:`teacher_temp`; set it per iteration for a warm-up.
        center_momentum: EMA momentum of the centre (0.9).
    """

    def __init__(self, out_dim: int, n_crops: int, student_temp: float = 0.1, teacher_temp: float = 0.07,
                 center_momentum: float = 0.9):
        super().__init__()
        if n_crops < 2:
            raise ValueError(f"n_crops must be >= 2 (two global crops at least), got {n_crops}")
        for name, t in (("student_temp", student_temp), ("teacher_temp", teacher_temp)):
            if t <= 0:
                raise ValueError(f"{name} must be positive, got {t}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = int(out_dim)
        self.n_crops = int(n_crops)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))
        #: the teacher temperature in use (DINO sets this iteration's before each step)
        self.teacher_temp = float(teacher_temp)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        """Loss of one step.

        Args:
            student_out: ``(n_crops * B, out_dim)``, crop-major (all images' crop 0, then crop 1...);
                crops 0 and 1 are the global ones.
            teacher_out: ``(2 * B, out_dim)``, the teacher on the two global crops, same order.
        """
        if student_out.ndim != 2 or teacher_out.ndim != 2 or student_out.shape[1] != self.out_dim \
                or teacher_out.shape[1] != self.out_dim:
            raise ValueError(f"expected (N, {self.out_dim}) outputs, got student {tuple(student_out.shape)} and "
                             f"teacher {tuple(teacher_out.shape)}")
        if teacher_out.shape[0] % 2 or student_out.shape[0] != self.n_crops * teacher_out.shape[0] // 2:
            raise ValueError(f"expected teacher outputs for 2 global crops and student outputs for {self.n_crops} "
                             f"crops of the same batch, got {teacher_out.shape[0]} and {student_out.shape[0]} rows")
        with torch.autocast(device_type=student_out.device.type, enabled=False):
            s = student_out.float() / self.student_temp
            t = teacher_out.detach().float()
            log_p_s = F.log_softmax(s, dim=-1).chunk(self.n_crops)
            p_t = F.softmax((t - self.center) / self.teacher_temp, dim=-1).chunk(2)
            total = s.new_zeros(())
            terms = 0
            for i, q in enumerate(p_t):
                for v, log_p in enumerate(log_p_s):
                    if v == i:
                        continue  # the student is not asked to match the teacher on the same view
                    total = total + torch.sum(-q * log_p, dim=-1).mean()
                    terms += 1
            loss = total / terms
        if self.training:
            self.update_center(t)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the teacher's batch mean, over every process's batch (an all-reduce when distributed)."""
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = teacher_out.shape[0]
        if is_distributed():
            dist.all_reduce(batch_sum)
            count *= get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1.0 - self.center_momentum)
