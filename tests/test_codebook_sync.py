"""Two training processes keep identical codebooks (EMA sums, restarts and k-means are shared),
and with the same random stream they change it as one process would on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from vqkit import distributed
from vqkit.config import QuantizerConfig
from vqkit.distributed import Context
from vqkit.quantize import build_quantizer

WORLD = 2
STEPS = 4


def rank_batches(rank: int) -> list[torch.Tensor]:
    """Different latents (B, D, H, W) on each rank, fixed by the rank."""
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, 4, 3, 3, generator=generator) * (1 + step) for step in range(STEPS)]


def settings(**overrides) -> QuantizerConfig:
    base = dict(num_embeddings=16, embedding_dim=4, codebook_update="ema", kmeans_iters=3)
    return QuantizerConfig(**{**base, **overrides})


HEALTH = {"dead_code_restart": 1, "codebook_init": "kmeans"}
# Configurations run in the same pair of processes (one spawn, to keep the test quick).
CONFIGS = {
    "health": HEALTH,
    "ema": {},
    "compiled": HEALTH,  # torch.compile after step 1
    "health-same-stream": HEALTH,  # both ranks seeded alike, as `vqkit train` seeds them
    "uneven": HEALTH,  # shards of different sizes, see SHARD_SIZES
}
# Three processes, for shards of which one holds the mean size and one is empty.
CONFIGS_OF_THREE = {"uneven": HEALTH}
# Images per rank at each step where the shards differ (2 everywhere else); restarts must
# wait at these steps. Two ranks: k-means at step 0 joins unequal shards.
SHARD_SIZES = {2: {0: (2, 1), 2: (2, 1)}, 3: {1: (2, 3, 4), 2: (0, 2, 2)}}


def batches_of(name: str, rank: int, world: int) -> list[torch.Tensor]:
    """The config's batches on ``rank``: the same sizes everywhere but for the uneven one."""
    batches = rank_batches(rank)
    if name != "uneven":
        return batches
    sizes = SHARD_SIZES[world]
    return [
        torch.cat([b, b])[: sizes[step][rank]] if step in sizes else b
        for step, b in enumerate(batches)
    ]


def one_process_batch(step: int) -> torch.Tensor:
    """Step ``step``'s whole batch as one process trains it: image m is rank m mod 2's image
    m // 2 (the shard layout of vqkit.training.epoch_batches)."""
    shards = torch.stack([rank_batches(rank)[step] for rank in range(WORLD)], dim=1)
    return shards.reshape(-1, *shards.shape[2:])


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    for name, overrides in (CONFIGS if world == WORLD else CONFIGS_OF_THREE).items():
        torch.manual_seed(0)  # the same initial codebook, as DDP would broadcast it
        quantizer = build_quantizer(settings(**overrides)).train()
        # Every later random choice differs between ranks, unless the config says otherwise.
        torch.manual_seed(1 if name == "health-same-stream" else 1 + rank)
        step = quantizer
        torch._dynamo.utils.counters.clear()
        restarts = []
        for index, batch in enumerate(batches_of(name, rank, world)):
            step(batch)
            restarts.append(quantizer.training_stats()["codebook_restarts"])
            if index == 0 and name == "compiled":  # k-means done eagerly, as CompiledStep does
                step = torch.compile(quantizer, dynamic=False)
        state = {k: v.contiguous() for k, v in quantizer.state_dict().items()}
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        state["graph_breaks"] = torch.tensor(breaks)
        state["restarts_by_step"] = torch.tensor(restarts)
        save_file(state, str(Path(out_dir) / f"{name}-rank{rank}.safetensors"))
    # As vqkit leaves a group: wait for the other ranks, then free it while the interpreter is
    # whole; a bare destroy_process_group let a rank abort at exit ("terminate called without
    # an active exception") now and then on a loaded machine.
    distributed.teardown(Context(rank=rank, world_size=world, owns_group=True), finished=True)


def spawn(world: int, out: Path, names) -> dict[str, list[dict[str, torch.Tensor]]]:
    mp.spawn(worker, args=(world, str(out / "init"), str(out)), nprocs=world, join=True)
    return {
        name: [load_file(str(out / f"{name}-rank{r}.safetensors")) for r in range(world)]
        for name in names
    }


@pytest.fixture(scope="module")
def rank_states(tmp_path_factory) -> dict[str, list[dict[str, torch.Tensor]]]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    return spawn(WORLD, tmp_path_factory.mktemp("ranks"), CONFIGS)


def test_ranks_end_with_identical_state_after_restarts_and_kmeans(rank_states):
    states = rank_states["health"]
    assert int(states[0]["restart_count"]) > 0  # restarts happened, so the test can fail
    for name, tensor in states[0].items():
        assert torch.equal(states[1][name], tensor), name


def test_compiled_restarts_stay_identical_across_ranks_in_one_graph(rank_states):
    # The restarts' rank-0 broadcast is an all-reduce: torch.compile broke its graph at
    # dist.broadcast (pybind options object), splitting every DDP step's forward in two.
    states = rank_states["compiled"]
    assert int(states[0]["restart_count"]) > 0
    assert int(states[0]["graph_breaks"]) == 0 and int(states[1]["graph_breaks"]) == 0
    for name, tensor in states[0].items():
        assert torch.equal(states[1][name], tensor), name


def test_two_ranks_update_like_one_process_on_both_batches(rank_states):
    states = rank_states["ema"]
    torch.manual_seed(0)
    single = build_quantizer(settings()).train()
    for step in range(STEPS):
        single(torch.cat([rank_batches(rank)[step] for rank in range(WORLD)]))
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(states[0][name], tensor, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[1][name], tensor, rtol=1e-5, atol=1e-6)


def test_two_ranks_restart_and_initialise_like_one_process_on_the_whole_batch(rank_states):
    # k-means and restarts draw from every rank's shard in the one-process order, so with the
    # same random stream the codebook changes exactly as one process would change it.
    states = rank_states["health-same-stream"]
    torch.manual_seed(0)
    single = build_quantizer(settings(**HEALTH)).train()
    torch.manual_seed(1)
    for step in range(STEPS):
        single(one_process_batch(step))
    assert int(single.restart_count) > 0
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(states[0][name], tensor, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[1][name], tensor, rtol=1e-5, atol=1e-6)


def shards_of_different_sizes_wait_to_restart(states, world: int) -> None:
    """Every rank in the same state; no restart at a step with unequal shards, some at others."""
    for rank_state in states[1:]:
        for name, tensor in states[0].items():
            assert torch.equal(rank_state[name], tensor), name
    restarts = [0, *states[0]["restarts_by_step"].tolist()]
    for step in SHARD_SIZES[world]:
        assert restarts[step + 1] == restarts[step], (step, restarts)
    assert restarts[-1] > 0 and bool(states[0]["kmeans_done"]), restarts


def test_ranks_with_shards_of_different_sizes_stay_identical(rank_states):
    # A custom loop may hand the ranks unequal shards (an uneven last batch): k-means joins
    # them rank after rank, and restarts wait for a step whose shards are equal.
    shards_of_different_sizes_wait_to_restart(rank_states["uneven"], WORLD)


def test_three_ranks_with_a_mean_sized_and_an_empty_shard_stay_identical(tmp_path):
    # Shards of 2, 3 and 4 images: the rank holding the mean size must not take the step for
    # an even one; an empty shard must neither crash its rank nor leave the others waiting.
    states = spawn(3, tmp_path, CONFIGS_OF_THREE)
    shards_of_different_sizes_wait_to_restart(states["uneven"], 3)
