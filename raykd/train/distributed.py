"""What a DDP rank needs beyond ``DistributedDataParallel``: the global batch of a KD feature.

DDP averages gradients over ranks, which equals training on the global batch only when the
loss is a mean of per-sample terms. Batch-coupled KD losses (SP, PKT and CC compare B×B
similarity matrices) are not: on a local batch they are a different loss. For those the KD
stage gathers the tapped features of all ranks with :func:`gather_batch` and computes the loss
over the global batch on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from raykd.errors import ConfigError


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather_interleaved(x: torch.Tensor) -> torch.Tensor:
    world = dist.get_world_size()
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    # Rank r holds global positions j·world + r of the batch (ShardedSampler): interleaving
    # restores the order that one rank with the global batch sees.
    return torch.stack(parts, dim=1).flatten(0, 1)


class _GatherBatch(torch.autograd.Function):
    """All-gather along dim 0; the backward hands each rank its share of the gradient.

    Every rank computes the same loss from the gathered tensor, and DDP averages the gradients
    of those ``world`` copies. So the backward sums the incoming gradient over ranks (all-reduce)
    and returns this rank's rows: after DDP's division by ``world`` every parameter gets exactly
    the gradient of the global-batch loss. (All-reduce, not reduce-scatter: gloo has none.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.world, ctx.rank = dist.get_world_size(), dist.get_rank()
        return _all_gather_interleaved(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.unflatten(0, (-1, ctx.world))[:, ctx.rank]


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch of ``x`` ([world·B, ...]); differentiable when ``x`` requires grad.

    Every rank must call it with the same shape (ShardedSampler gives equal local batches).
    """
    if world_size() == 1:
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _GatherBatch.apply(x)
    return _all_gather_interleaved(x)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_batch(global_batch: int, world: int) -> int:
    """The per-rank batch of a global batch; a split that leaves a remainder is refused."""
    if global_batch % world:
        raise ConfigError(
            f"data.batch_size {global_batch} (the global batch) cannot be split evenly over "
            f"{world} workers; choose a batch size that is a multiple of {world}"
        )
    return global_batch // world


def uneven_epoch_note(slices: int, world: int) -> str | None:
    """The sampler pads an epoch by repeating slices so every rank takes the same number of
    steps; the last global batch then differs from a 1-worker run's. Say so, or None."""
    if world <= 1 or slices % world == 0:
        return None
    return (
        f"{slices} train slices are not a multiple of the world size {world}: each epoch "
        f"repeats {-slices % world} slice(s), so the result differs slightly from a 1-worker run"
    )
