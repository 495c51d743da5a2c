"""Data-parallel training on several processes: torch.distributed, DistributedDataParallel.

One process per rank (``torchrun --nproc-per-node N -m training train ...``, or
``musecl train --nproc N``, which starts them through torch's elastic launcher). Every rank
reads the city and draws the same global batches from the same seeded generators; each
rank runs the networks on its own slice of every batch (the distributed sampler: contiguous,
near-equal slices), and the contrastive losses are computed on the whole global batch:

- the embeddings of the slices are all-gathered (:meth:`Parallel.gather`, differentiable),
  so every anchor still sees the negatives of the whole batch;
- batch normalisation uses the statistics of the whole batch (:class:`GlobalBatchNorm2d`,
  the CPU counterpart of ``torch.nn.SyncBatchNorm``, which runs on GPUs only);
- DistributedDataParallel averages the gradients.

So N processes compute the gradients of one process with the same global batch (up to
float rounding): the same seed gives the same model. Gloo runs the collectives on CPUs,
NCCL on GPUs. Rank 0 alone writes checkpoints, the model file and the model version.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun (and the elastic launcher) set in each rank's environment."""


def _sizes(n: int, world: int) -> list[int]:
    """Rows of each rank's slice of a batch of ``n`` (``np.array_split``'s split)."""
    return [len(part) for part in np.array_split(np.arange(n), world)]


class _AllGather(torch.autograd.Function):
    """All-gather of equal-shaped tensors, stacked on a new first axis. Backward: each rank
    gets the sum over ranks of the gradients on its own part (every rank's loss counts)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, world: int, rank: int) -> Tensor:
        ctx.group, ctx.rank = group, rank
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None, None, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward sums the gradients over ranks in the same way."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch (all
    ranks): mean first, then the variance around it (two passes, as exact as one process).
    In eval mode, or outside a process group, it is the plain BatchNorm2d. Same parameters,
    buffers and state-dict keys as BatchNorm2d (see :meth:`Parallel.global_batch_norm`)."""

    group: Any = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        c = x.shape[1]
        count = x.new_full((1,), x.numel() / c if c else 0.0)
        total = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), count]), self.group)
        n = total[c]
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3)), self.group) / n
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out


@dataclass
class Parallel:
    """This process's place in a data-parallel run; rank 0 of 1 when not distributed, where
    every method is the identity (one process trains exactly as it always has)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that logs, checkpoints and writes."""
        return self.rank == 0

    # ------------------------------------------------------------------ set-up

    @classmethod
    def from_env(cls, device: torch.device) -> Parallel:
        """Join the process group that torchrun describes in the environment (gloo on the
        CPU, NCCL on CUDA); one process alone when there is none."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        if not dist.is_available():  # pragma: no cover - every supported build has it
            raise RuntimeError("this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        rank, world = dist.get_rank(), dist.get_world_size()
        # The gathers and batch-norm sums of the forward pass get their own group: they never
        # interleave with DDP's gradient buckets.
        group = dist.new_group(backend=backend)
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", rank) or 0), group)

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU (its local rank) when training on CUDA."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    # ------------------------------------------------------------------ batches

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch of ``n``."""
        if not self.active:
            return 0, n
        sizes = _sizes(n, self.world)
        lo = sum(sizes[: self.rank])
        return lo, lo + sizes[self.rank]

    def shard(self, rows: Any) -> Any:
        """This rank's slice of a global batch (numpy array or tensor, first axis)."""
        lo, hi = self.bounds(len(rows))
        return rows[lo:hi]

    def gather(self, x: Tensor, n: int) -> Tensor:
        """The global batch of ``n`` rows from every rank's slice ``x`` (the rows of
        :meth:`shard`, in order); differentiable."""
        if not self.active:
            return x
        sizes = _sizes(n, self.world)
        most = max(sizes)
        if len(x) < most:  # all_gather wants equal shapes: pad, then cut the padding off
            x = torch.cat([x, x.new_zeros((most - len(x), *x.shape[1:]))])
        stacked = _AllGather.apply(x, self.group, self.world, self.rank)
        return torch.cat([stacked[r, : sizes[r]] for r in range(self.world)])

    # ------------------------------------------------------------------ agreement

    def agree(self, value: float) -> float:
        """Rank 0's value on every rank: decisions (early stopping) are taken once."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, 0, group=self.group)
        return float(t.item())

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.group)

    # ------------------------------------------------------------------ modules

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over ranks), or itself.
        Its parameters are rank 0's from here on (DDP broadcasts them)."""
        if not self.active:
            return module
        ids = [device.index] if device.type == "cuda" else None
        # Buffers (batch-norm statistics) are computed alike on every rank: no per-step sync.
        return nn.parallel.DistributedDataParallel(
            module, device_ids=ids, forward_sync_buffers=False
        )

    @contextlib.contextmanager
    def global_batch_norm(self, module: nn.Module) -> Iterator[None]:
        """Within the block, the BatchNorm2d layers of ``module`` normalise by the statistics
        of the global batch; their class is restored afterwards (weights untouched)."""
        if not self.active:
            yield
            return
        swapped = [m for m in module.modules() if type(m) is nn.BatchNorm2d]
        for m in swapped:
            m.__class__ = GlobalBatchNorm2d
            m.group = self.group
        try:
            yield
        finally:
            for m in swapped:
                m.__class__ = nn.BatchNorm2d
                del m.group
