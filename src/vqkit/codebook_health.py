"""Keeping a codebook alive: k-means initialisation, dead-code restarts, and rank synchronisation.

With several training processes (DistributedDataParallel), every rank sees a different shard of
the batch but must keep an identical codebook. The helpers here sum statistics over ranks, draw
k-means seeds and restart vectors from the whole batch (every rank's shard, in the one-process
batch's order), and let rank 0's random choices decide, so codebook changes are the same
everywhere and, when the ranks' random streams agree (as in ``vqkit train``), the same as one
process makes on the whole batch. With one process they are plain local operations.

Shard layout (``vqkit.training.epoch_batches``): of a step's one-process batch, image m is on
rank m mod W at local position m // W, every rank holds the same number of images, and each
image contributes the same number of rows (its latent grid positions).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vqkit.quantize import nearest_codes


def distributed() -> bool:
    """True when running inside an initialised multi-process group."""
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Code counts (K,) summed over ranks; a () bool, True when every value of ``vectors`` is
    finite on every rank; and a () bool, True when every rank holds as many rows as every
    other (sample_rows needs it). One collective for all three, no host wait."""
    rank, size = world()
    bad = (~torch.isfinite(vectors)).any().float().reshape(1)
    # Each rank's row count in its own slot, written by a fill on the device (no copy from the
    # host, so a captured graph may hold it); after the sum every rank sees all of them.
    rows = torch.zeros(size, device=vectors.device)
    rows[rank : rank + 1].fill_(float(vectors.shape[0]))
    summed = all_reduce_sum_(torch.cat([counts.float(), bad, rows]))
    counts_sum, bad_sum, all_rows = summed[: counts.numel()], summed[counts.numel()], summed[-size:]
    return counts_sum, bad_sum == 0, (all_rows == all_rows[0]).all()


def gather_batch(vectors: torch.Tensor, rows_per_image: int) -> torch.Tensor:
    """Every rank's rows (n, D) as one batch, on every rank (waits for the host: call once).

    With equal shards (vqkit's training, DistributedSampler) the rows come in the one-process
    batch's order; shards of different sizes are joined rank after rank.
    """
    rank, size = world()
    if size == 1:
        return vectors
    sizes = torch.zeros(size, dtype=torch.long, device=vectors.device)
    sizes[rank] = vectors.shape[0]
    sizes = all_reduce_sum_(sizes).tolist()
    widest = max(sizes)
    padded = torch.zeros(widest, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    padded[: vectors.shape[0]] = vectors
    shards = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(shards, padded)
    if min(sizes) != widest:
        return torch.cat([shard[:n] for shard, n in zip(shards, sizes, strict=True)])
    # (W, n_images, rows, D) -> image m = local position · W + rank comes m-th.
    stacked = torch.stack(shards).view(size, -1, rows_per_image, vectors.shape[1])
    return stacked.transpose(0, 1).reshape(-1, vectors.shape[1])


def sample_rows(vectors: torch.Tensor, count: int, rows_per_image: int = 1) -> torch.Tensor:
    """``count`` random rows of the whole batch -> (count, D) float, the same on every rank.

    ``vectors`` (n, D) is this rank's shard of equal shards (check with
    :func:`summed_counts_and_health`; with unequal ones the rows are not to be used, but every
    rank still takes part and nothing is indexed out of range). The draw is over the
    one-process batch of W·n rows (rank 0's draw decides); each rank fills in the rows it holds
    and a sum over ranks assembles them, so no rank needs the others' shards. Drawn without
    replacement when there are enough rows, so restarted codes start apart.
    """
    rank, size = world()
    n = vectors.shape[0]
    total = max(n, 1) * size  # an empty shard still draws and takes part in the sums
    if count <= total:
        picks = torch.randperm(total, device=vectors.device)[:count]
    else:
        picks = torch.randint(total, (count,), device=vectors.device)
    if size == 1:
        return vectors[picks].detach().float()
    picks = broadcast_from_first_(picks)
    image, offset = picks // rows_per_image, picks % rows_per_image
    if n == 0:
        return all_reduce_sum_(vectors.new_zeros(count, vectors.shape[1], dtype=torch.float))
    local = ((image // size) * rows_per_image + offset).clamp(max=n - 1)
    rows = vectors[local].detach().float()
    held = (image % size == rank).unsqueeze(1)
    # where, not a product: a non-finite row of another rank must not become NaN here.
    return all_reduce_sum_(torch.where(held, rows, torch.zeros_like(rows)).contiguous())


@torch.no_grad()
def kmeans_plus_plus_seeds(vectors: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of ``vectors`` (N, D) -> (num_clusters, D).

    Each new seed is drawn with probability proportional to its squared distance from the seeds
    so far, which spreads them over the data instead of doubling up inside one cluster.
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
    return seeds


@torch.no_grad()
def kmeans(vectors: torch.Tensor, num_clusters: int, iterations: int) -> torch.Tensor:
    """Lloyd's k-means on ``vectors`` (N, D) -> centroids (num_clusters, D), identical on all ranks.

    Starts from k-means++ seeds; a cluster that loses all its members keeps its centroid.
    Every rank clusters the same rows (pass :func:`gather_batch`'s whole batch); rank 0's
    centroids are broadcast, so ranks whose random streams differ still agree.
    """
    vectors = vectors.detach().float()
    centroids = kmeans_plus_plus_seeds(vectors, num_clusters)
    for _ in range(iterations):
        assignment = nearest_codes(vectors, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)  # (K, D)
        counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)  # (K,)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return broadcast_from_first_(centroids)


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
