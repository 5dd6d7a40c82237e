"""Interpolation paths: exact ends, monotone patch switching, the tutorial's random masks, latent
ends equal encode()."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqkit.data import load_split
from vqkit.errors import VqkitError
from vqkit.interpolate import (
    interpolate_codes,
    interpolate_latent,
    interpolation,
    interpolation_strip,
    patch_switch_codes,
)
from vqkit.model import VQVAE


def grids(draw_seed: int, size: int, codes: int, overlap: float) -> tuple[torch.Tensor, ...]:
    """Two (size, size) grids that agree on roughly ``overlap`` of their patches."""
    generator = torch.Generator().manual_seed(draw_seed)
    a = torch.randint(0, codes, (size, size), generator=generator)
    b = torch.randint(0, codes, (size, size), generator=generator)
    same = torch.rand(size, size, generator=generator) < overlap
    return a, torch.where(same, a, b)


def check_monotone_path(frames: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b)
    differ = a != b
    # Every frame holds, at each patch, A's code or B's code.
    assert torch.all((frames == a) | (frames == b))
    at_b = (frames == b) & differ  # (steps, h, w): patches already switched (visible ones)
    for before, after, prev_frame, frame in zip(
        at_b[:-1], at_b[1:], frames[:-1], frames[1:], strict=True
    ):
        changed = prev_frame != frame
        assert torch.all(differ[changed])  # only patches where A and B differ ever change
        assert torch.all(after >= before)  # a switched patch never switches back


# Two grids (see grids) and a path length, drawn by hypothesis.
GRID_PAIRS = {
    "seed": st.integers(0, 10_000),
    "size": st.integers(1, 9),
    "codes": st.integers(2, 20),
    "overlap": st.floats(0.0, 1.0),
    "steps": st.integers(2, 20),
}


@settings(max_examples=60, deadline=None)
@given(**GRID_PAIRS, mode=st.sampled_from(["crossfade", "wipe"]))
def test_code_paths_go_exactly_from_a_to_b_monotonically(seed, size, codes, overlap, steps, mode):
    a, b = grids(seed, size, codes, overlap)
    frames = interpolate_codes(a, b, steps, mode, torch.Generator().manual_seed(seed))
    assert frames.shape == (steps, size, size)
    check_monotone_path(frames, a, b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(2, 12))
def test_patch_schedule_counts_round_t_times_p(seed, steps):
    # With A and B differing everywhere, the switched count at step i is round(i/(steps-1)·P).
    a = torch.zeros(7, 7, dtype=torch.long)
    b = torch.ones(7, 7, dtype=torch.long)
    frames = interpolate_codes(a, b, steps, "crossfade", torch.Generator().manual_seed(seed))
    for index, frame in enumerate(frames):
        assert int(frame.sum()) == round(index / (steps - 1) * 49)


def test_wipe_switches_in_raster_order():
    a = torch.zeros(7, 7, dtype=torch.long)
    b = torch.arange(1, 50).view(7, 7)
    frames = interpolate_codes(a, b, 8, "wipe")
    for index, frame in enumerate(frames):
        count = round(index / 7 * 49)
        expected = torch.cat([b.flatten()[:count], a.flatten()[count:]]).view(7, 7)
        assert torch.equal(frame, expected)


def test_patches_switch_in_the_given_order():
    # Step i of 5 switches round(i/4 · 4) = i patches: those at order[0], ..., order[i-1].
    a = torch.zeros(2, 2, dtype=torch.long)
    b = torch.tensor([[1, 2], [3, 4]])
    order = torch.tensor([2, 0, 3, 1])  # bottom-left, top-left, bottom-right, top-right
    frames = patch_switch_codes(a, b, order, 5)
    expected = [
        [[0, 0], [0, 0]],
        [[0, 0], [3, 0]],
        [[1, 0], [3, 0]],
        [[1, 0], [3, 4]],
        [[1, 2], [3, 4]],
    ]
    assert frames.tolist() == expected


def test_crossfade_order_depends_on_seed_only():
    a, b = torch.zeros(7, 7, dtype=torch.long), torch.ones(7, 7, dtype=torch.long)
    one = interpolate_codes(a, b, 5, "crossfade", torch.Generator().manual_seed(1))
    same = interpolate_codes(a, b, 5, "crossfade", torch.Generator().manual_seed(1))
    other = interpolate_codes(a, b, 5, "crossfade", torch.Generator().manual_seed(2))
    assert torch.equal(one, same) and not torch.equal(one, other)


@pytest.mark.parametrize("mode", ["crossfade", "wipe", "random-mask"])
def test_numpy_grids_give_the_path_their_tensors_give(mode):
    a, b = torch.arange(49).view(7, 7), torch.arange(49, 98).view(7, 7)
    from_arrays = interpolate_codes(a.numpy(), b.numpy(), 4, mode, torch.Generator().manual_seed(3))
    from_tensors = interpolate_codes(a, b, 4, mode, torch.Generator().manual_seed(3))
    assert torch.equal(from_arrays, from_tensors)
    with pytest.raises(VqkitError, match="must hold integers, not torch.float64"):
        interpolate_codes(a.double().numpy(), b, 4, mode)
    with pytest.raises(VqkitError, match="tensor or array of integers, not a str"):
        interpolate_codes("a", b, 4, mode)


def random_mask_paths(steps: int, paths: int) -> torch.Tensor:
    """``paths`` random-mask interpolations of 7×7 grids from all-0 to all-1 codes: (paths,
    steps, 49) with 1 where a patch holds B's code."""
    a, b = torch.zeros(7, 7, dtype=torch.long), torch.ones(7, 7, dtype=torch.long)
    return torch.stack(
        [
            interpolate_codes(a, b, steps, "random-mask", torch.Generator().manual_seed(seed))
            for seed in range(paths)
        ]
    ).view(paths, steps, 49)


@settings(max_examples=40, deadline=None)
@given(**GRID_PAIRS)
def test_random_mask_paths_start_at_a_end_at_b_and_mix_only_their_codes(
    seed, size, codes, overlap, steps
):
    a, b = grids(seed, size, codes, overlap)
    frames = interpolate_codes(a, b, steps, "random-mask", torch.Generator().manual_seed(seed))
    assert frames.shape == (steps, size, size)
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b)
    assert torch.all((frames == a) | (frames == b))


def test_random_mask_takes_each_patch_from_b_with_probability_t_afresh_at_every_step():
    # The tutorial's recipe: at step t each patch is B's with probability t, independently of
    # the other patches and steps. Over 2,000 paths of 8 steps (t = i/7), the share of B's
    # patches must be t, and a patch must be B's at two consecutive steps with probability
    # t·t' (independent masks), where crossfade's nested masks give min(t, t').
    steps, paths = 8, 2000
    switched = random_mask_paths(steps, paths).double()
    t = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    draws = paths * 49
    share = switched.mean(dim=(0, 2))
    assert torch.all((share - t).abs() <= 4 * (t * (1 - t) / draws).sqrt() + 1e-12), share
    both = (switched[:, :-1] * switched[:, 1:]).mean(dim=(0, 2))
    expected = t[:-1] * t[1:]
    bound = 4 * (expected * (1 - expected) / draws).sqrt()
    assert torch.all((both - expected).abs() <= bound + 1e-12), (both, expected)
    crossfade_pair = torch.minimum(t[:-1], t[1:])
    assert torch.all((both - crossfade_pair)[1:-1].abs() > 10 * bound[1:-1])


def test_random_mask_depends_on_the_seed_only():
    first, again = random_mask_paths(5, 3), random_mask_paths(5, 3)
    assert torch.equal(first, again) and not torch.equal(first[0], first[1])


@pytest.fixture(scope="module")
def model_and_pair(small_run):
    model = VQVAE.from_run(small_run.run_dir)
    test = load_split("mnist", "test")
    return model, test.images[0], test.images[1]


@pytest.mark.parametrize("steps", [2, 9])
def test_latent_ends_equal_encode(model_and_pair, steps):
    model, image_a, image_b = model_and_pair
    frames = interpolate_latent(model, image_a, image_b, steps)
    with torch.no_grad():
        expected = model.encode(torch.stack([image_a, image_b]))
    assert frames.shape == (steps, 7, 7)
    assert torch.equal(frames[0], expected[0]) and torch.equal(frames[-1], expected[1])


def test_a_float64_models_latent_path_ends_at_its_own_codes(model_and_pair):
    # The step fractions take the encoder's float type (torch.lerp refuses a mix).
    model, image_a, image_b = model_and_pair
    wide = copy.deepcopy(model).double()
    frames = interpolate_latent(wide, image_a, image_b, 4)
    expected = wide.encode(torch.stack([image_a, image_b]))
    assert torch.equal(frames[0], expected[0]) and torch.equal(frames[-1], expected[1])


def test_latent_midpoint_is_the_nearest_code_to_the_mean_encoding(model_and_pair):
    # With 3 steps the middle one is t = 1/2: the codes of (z_A + z_B) / 2, found here by brute
    # force over the codebook at every grid position.
    model, image_a, image_b = model_and_pair
    middle = interpolate_latent(model, image_a, image_b, 3)[1]
    with torch.no_grad():
        z_a, z_b = model.encoder(model.model_input(torch.stack([image_a, image_b])))
    mean = ((z_a + z_b) / 2).double()  # (D, h, w)
    codebook = model.quantizer.codebook.detach().double()  # (K, D)
    distances = (mean.unsqueeze(0) - codebook[:, :, None, None]).pow(2).sum(dim=1)  # (K, h, w)
    assert torch.equal(middle, distances.argmin(dim=0))


@pytest.mark.parametrize("mode", ["crossfade", "wipe", "latent"])
def test_interpolation_and_strip(model_and_pair, mode):
    model, image_a, image_b = model_and_pair
    codes = interpolation(model, image_a, image_b, 6, mode, seed=3)
    with torch.no_grad():
        ends = model.encode(torch.stack([image_a, image_b]))
    assert torch.equal(codes[0], ends[0]) and torch.equal(codes[-1], ends[1])
    strip = interpolation_strip(model, image_a, image_b, codes)
    assert strip.shape == (8, 28, 28)
    assert torch.equal(strip[0], image_a.float() / 255) and torch.equal(strip[-1], image_b / 255)
    with torch.no_grad():
        assert torch.equal(strip[1:-1], model.decode(codes)[:, 0])


@pytest.mark.parametrize("mode", ["crossfade", "random-mask"])
def test_the_seed_picks_the_random_path(model_and_pair, mode):
    # interpolation(seed=s) draws its order or masks from a generator seeded with s: the path of
    # the pair's codes that interpolate_codes gives with that generator, another for each seed.
    model, image_a, image_b = model_and_pair
    with torch.no_grad():
        codes_a, codes_b = model.encode(torch.stack([image_a, image_b]))
    assert int((codes_a != codes_b).sum()) > 1  # else every order gives the same path
    paths = []
    for seed in (0, 7):
        generator = torch.Generator().manual_seed(seed)
        expected = interpolate_codes(codes_a, codes_b, 6, mode, generator)
        paths.append(interpolation(model, image_a, image_b, 6, mode, seed=seed))
        assert torch.equal(paths[-1], expected)
    assert not torch.equal(paths[0], paths[1])


def test_interpolation_errors(model_and_pair):
    model, image_a, image_b = model_and_pair
    with pytest.raises(
        VqkitError, match="interpolation steps must be a whole number of at least 2"
    ):
        interpolation(model, image_a, image_b, 1)
    with pytest.raises(VqkitError, match="Unknown interpolation mode"):
        interpolation(model, image_a, image_b, 4, "spiral")
    with pytest.raises(VqkitError, match="same shape"):
        interpolate_codes(
            torch.zeros(7, 7, dtype=torch.long), torch.zeros(6, 6, dtype=torch.long), 4
        )
    with pytest.raises(VqkitError, match="pixels of one type, not torch.uint8 and torch.float32"):
        interpolation(model, image_a, image_b.float() / 255)  # not read as floats 0-255
