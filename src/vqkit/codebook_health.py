"""Keeping a codebook alive: k-means initialisation, dead-code restarts, and rank synchronisation.

With several training processes (DistributedDataParallel), every rank sees a different batch but
must keep an identical codebook. The helpers here sum statistics over ranks and make every random
choice on rank 0 and broadcast it, so codebook changes are the same everywhere. With one process
they are plain local operations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vqkit.quantize import nearest_codes


def distributed() -> bool:
    """True when running inside an initialised multi-process group."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op in a single process)."""
    if distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_first_(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` with rank 0's copy in place (a no-op in a single process).

    Done as a sum of rank 0's copy and every other rank's zeros: torch.compile traces an
    all-reduce into its graph but breaks the graph at a broadcast.
    """
    if distributed():
        if dist.get_rank() != 0:
            tensor.zero_()
        dist.all_reduce(tensor)
    return tensor


def summed_counts_and_health(
    counts: torch.Tensor, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Code counts (K,) summed over ranks, and a () bool that is True when every value of
    ``vectors`` is finite on every rank: one collective for both, no host wait."""
    bad = (~torch.isfinite(vectors)).any().float().reshape(1)
    summed = all_reduce_sum_(torch.cat([counts.float(), bad]))
    return summed[:-1], summed[-1] == 0


def sample_rows(vectors: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` random rows of ``vectors`` (N, D) -> (count, D), the same rows on every rank.

    Drawn without replacement when there are enough rows, so restarted codes start apart.
    """
    n = vectors.shape[0]
    if count <= n:
        picks = torch.randperm(n, device=vectors.device)[:count]
    else:
        picks = torch.randint(n, (count,), device=vectors.device)
    return broadcast_from_first_(vectors[picks].detach().float().contiguous())


@torch.no_grad()
def kmeans_plus_plus_seeds(vectors: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of ``vectors`` (N, D) -> (num_clusters, D).

    Each new seed is drawn with probability proportional to its squared distance from the seeds
    so far, which spreads them over the data instead of doubling up inside one cluster.
    Computed on each rank's own rows; rank 0's seeds are broadcast.
    """
    seeds = torch.empty(num_clusters, vectors.shape[1], device=vectors.device)
    first = int(torch.randint(vectors.shape[0], ()))
    seeds[0] = vectors[first]
    nearest = (vectors - seeds[0]).pow(2).sum(dim=1)  # (N,) squared distance to the nearest seed
    for k in range(1, num_clusters):
        if float(nearest.sum()) > 0:
            pick = int(torch.multinomial(nearest, 1))
        else:  # fewer distinct rows than clusters: repeat a row
            pick = int(torch.randint(vectors.shape[0], ()))
        seeds[k] = vectors[pick]
        nearest = torch.minimum(nearest, (vectors - seeds[k]).pow(2).sum(dim=1))
    return broadcast_from_first_(seeds)


@torch.no_grad()
def kmeans(vectors: torch.Tensor, num_clusters: int, iterations: int) -> torch.Tensor:
    """Lloyd's k-means on ``vectors`` (N, D) -> centroids (num_clusters, D), identical on all ranks.

    Starts from k-means++ seeds; a cluster that loses all its members keeps its centroid.
    Each rank clusters its own rows with shared centroids (sums and counts are all-reduced).
    """
    vectors = vectors.detach().float()
    centroids = kmeans_plus_plus_seeds(vectors, num_clusters)
    for _ in range(iterations):
        assignment = nearest_codes(vectors, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)  # (K, D)
        counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)  # (K,)
        all_reduce_sum_(sums)
        all_reduce_sum_(counts)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centroids


@torch.no_grad()
def update_steps_since_used(steps_since_used: torch.Tensor, counts: torch.Tensor) -> None:
    """Count one more step for every code, and reset the codes chosen now (counts summed over
    ranks) to zero. steps_since_used, counts: (K,)."""
    steps_since_used.add_(1).masked_fill_(counts > 0, 0)


def dead_code_mask(
    steps_since_used: torch.Tensor,
    window: int,
    cluster_size: torch.Tensor | None = None,
    threshold: float = 0.0,
) -> torch.Tensor:
    """(K,) bool: codes to restart, unused for ``window`` steps or (EMA) with a cluster size below
    ``threshold``. Built from rank-synchronised counters, so the same on every rank."""
    dead = steps_since_used >= window
    if cluster_size is not None and threshold > 0:
        dead |= cluster_size < threshold
    return dead
