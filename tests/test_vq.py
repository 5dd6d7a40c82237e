"""The codebook quantizer: EMA against hand formulas, restarts, k-means init, checkpoints."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqkit import runfiles
from vqkit.checkpoint import load_model, save_config, save_weights
from vqkit.codebook_health import dead_code_mask, kmeans, kmeans_plus_plus_seeds, sample_rows
from vqkit.config import GRADIENT_ESTIMATORS, ModelConfig, QuantizerConfig, RunConfig
from vqkit.model import VQVAE
from vqkit.quantize import build_quantizer
from vqkit.rotation import ESTIMATOR_FUNCTIONS, rotation_trick
from vqkit.training import train


def as_latents(vectors: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors -> (1, D, 1, N) latents whose flattening gives back the rows in order."""
    return vectors.t().reshape(1, vectors.shape[1], 1, vectors.shape[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ema_update_matches_hand_computed_formulas(dtype):
    """In fp32 as trained, and in float64 (a model turned .double() for gradient checks)."""
    decay, eps = 0.9, 0.01
    quantizer = build_quantizer(
        QuantizerConfig(
            num_embeddings=3,
            embedding_dim=2,
            codebook_update="ema",
            ema_decay=decay,
            ema_epsilon=eps,
        )
    )
    codebook = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = np.array([2.0, 1.0, 0.5])
    sums = np.array([[0.2, -0.2], [9.0, 1.0], [0.0, 4.0]])
    quantizer.codebook.copy_(torch.tensor(codebook))
    quantizer.ema_cluster_size.copy_(torch.tensor(sizes))
    quantizer.ema_embed_sum.copy_(torch.tensor(sums))
    # Three vectors near code 0, one near code 1, none near code 2.
    batch = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [9.0, 2.0]])

    quantizer.to(dtype).train()
    out = quantizer(as_latents(torch.tensor(batch, dtype=dtype)))

    assert out.codes.flatten().tolist() == [0, 0, 0, 1]
    counts = np.array([3.0, 1.0, 0.0])
    batch_sums = np.array([[0.0, 2.0], [9.0, 2.0], [0.0, 0.0]])
    new_sizes = decay * sizes + (1 - decay) * counts
    new_sums = decay * sums + (1 - decay) * batch_sums
    total = new_sizes.sum()
    smoothed = (new_sizes + eps) / (total + 3 * eps) * total
    expected = new_sums / smoothed[:, None]
    np.testing.assert_allclose(quantizer.ema_cluster_size.numpy(), new_sizes, rtol=1e-6)
    np.testing.assert_allclose(quantizer.ema_embed_sum.numpy(), new_sums, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(quantizer.codebook.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The loss is the commitment term only, measured against the codes before the update.
    commitment = ((batch - codebook[[0, 0, 0, 1]]) ** 2).mean()
    assert float(out.loss) == pytest.approx(0.25 * commitment, rel=1e-6)


def test_ema_codebook_is_not_an_optimizer_parameter():
    config = ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(num_embeddings=8, embedding_dim=4))
    assert "quantizer.codebook" in dict(VQVAE(config).named_parameters())
    config.quantizer.codebook_update = "ema"
    model = VQVAE(config)
    assert "quantizer.codebook" not in dict(model.named_parameters())
    assert "quantizer.codebook" in model.state_dict()


@torch.no_grad()
def set_codebook(quantizer, codebook: torch.Tensor) -> None:
    """Set the codes; with EMA also the sums, so the next update keeps unused codes in place."""
    quantizer.codebook.copy_(codebook)
    if quantizer.ema:
        quantizer.ema_embed_sum.copy_(codebook * quantizer.ema_cluster_size.unsqueeze(1))


def health_config(**overrides) -> QuantizerConfig:
    settings = dict(
        num_embeddings=8,
        embedding_dim=4,
        codebook_update="ema",
        dead_code_restart=1,
        codebook_init="kmeans",
        kmeans_iters=3,
    )
    return QuantizerConfig(**{**settings, **overrides})


def test_eval_mode_changes_no_statistics():
    torch.manual_seed(0)
    quantizer = build_quantizer(health_config())
    quantizer.train()
    quantizer(torch.randn(2, 4, 3, 3))  # initialise and update once, so every state is non-trivial
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer.eval()
    for _ in range(3):
        quantizer(torch.randn(2, 4, 3, 3) * 5)
        quantizer.quantize_codes(torch.randn(2, 4, 3, 3))
    for name, tensor in quantizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_eval_mode_skips_kmeans_init():
    quantizer = build_quantizer(health_config())
    codebook = quantizer.codebook.clone()
    quantizer.eval()
    quantizer(torch.randn(2, 4, 3, 3))
    assert not bool(quantizer.kmeans_done)
    assert torch.equal(quantizer.codebook, codebook)


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_restarted_codes_equal_encoder_outputs_of_the_batch(update):
    torch.manual_seed(1)
    quantizer = build_quantizer(
        health_config(codebook_update=update, codebook_init="uniform", dead_code_restart=1)
    )
    batch = torch.randn(40, 4)
    # Codes 0-2 sit on the data; 3-7 are far away and will not be chosen.
    far = torch.full((5, 4), 100.0) + torch.arange(5.0).unsqueeze(1)
    set_codebook(quantizer, torch.cat([batch[:3], far]))
    quantizer.train()
    latents = as_latents(batch).requires_grad_(True)
    out = quantizer(latents)
    # The in-place restart must not break the step's backward pass, whose gradient is the
    # straight-through one: d(sum q²)/dz = 2q, plus the commitment term's 2β(z - q)/(N·D).
    (out.quantized.pow(2).sum() + out.loss).backward()
    chosen = out.quantized.detach()
    beta = quantizer.config.beta
    expected = 2 * chosen + 2 * beta * (latents.detach() - chosen) / latents.numel()
    torch.testing.assert_close(latents.grad, expected)

    assert set(out.codes.flatten().tolist()) <= {0, 1, 2}
    assert int(quantizer.restart_count) == 5
    for code in range(3, 8):
        matches = (batch == quantizer.codebook[code]).all(dim=1)
        assert matches.any(), f"code {code} is not one of the batch's encoder outputs"
    # Five distinct rows, since there are enough to draw without replacement.
    assert len({tuple(row.tolist()) for row in quantizer.codebook[3:]}) == 5
    assert quantizer.steps_since_used[3:].eq(0).all()
    if update == "ema":  # a restarted code stands for the one vector it copies
        assert quantizer.ema_cluster_size[3:].eq(1).all()
        assert torch.equal(quantizer.ema_embed_sum[3:], quantizer.codebook[3:])
    assert quantizer.training_stats() == {"codebook_restarts": 5}


def test_restarts_from_a_batch_smaller_than_the_codebook_reuse_its_rows():
    # Three rows, eight codes, five of them dead: rows are drawn with replacement, so each
    # restarted code is one of the three encoder outputs.
    torch.manual_seed(2)
    quantizer = build_quantizer(
        health_config(codebook_update="loss", codebook_init="uniform", dead_code_restart=1)
    )
    batch = torch.randn(3, 4)
    set_codebook(quantizer, torch.cat([batch, torch.full((5, 4), 100.0)]))
    quantizer.train()
    quantizer(as_latents(batch))
    assert int(quantizer.restart_count) == 5
    for code in range(3, 8):
        assert (batch == quantizer.codebook[code]).all(dim=1).any()


def test_restarts_from_a_batch_as_large_as_the_codebook_land_on_distinct_rows():
    # Eight codes (seven dead) and a batch of eight rows: enough rows to draw without
    # replacement, so the seven restarted codes are seven different rows. Drawn with
    # replacement, that happens with chance 8!/8^7 (2%); two codes on one row would split its
    # assignments and leave the other codes' rows unserved.
    torch.manual_seed(5)
    quantizer = build_quantizer(
        health_config(codebook_update="loss", codebook_init="uniform", dead_code_restart=1)
    )
    batch = torch.randn(8, 4)
    set_codebook(quantizer, torch.cat([batch.mean(0, keepdim=True), torch.full((7, 4), 100.0)]))
    quantizer.train()
    quantizer(as_latents(batch))
    assert int(quantizer.restart_count) == 7
    rows = {tuple(row) for row in batch.tolist()}
    restarted = [tuple(row) for row in quantizer.codebook.detach()[1:].tolist()]
    assert set(restarted) <= rows and len(set(restarted)) == 7


@pytest.mark.parametrize("draws_per_call", [2, 8])  # 8 of 5 rows: drawn with replacement
def test_restart_rows_are_drawn_uniformly_from_the_whole_batch(draws_per_call):
    # Dead codes restart on rows drawn at random from the batch; always taking its first rows
    # (or never its last) would restart codes from the same few images, step after step.
    rows, calls = 5, 2000
    vectors = torch.arange(float(rows)).unsqueeze(1)  # row i holds the value i
    torch.manual_seed(0)
    drawn = torch.cat([sample_rows(vectors, draws_per_call).flatten() for _ in range(calls)])
    counts = torch.bincount(drawn.long(), minlength=rows).double()
    expected = draws_per_call * calls / rows
    # Each row's count within 5 binomial standard deviations of an even share.
    assert torch.all((counts - expected).abs() < 5 * math.sqrt(expected * (1 - 1 / rows)))


def test_restart_waits_for_the_window():
    quantizer = build_quantizer(health_config(codebook_init="uniform", dead_code_restart=3))
    batch = torch.randn(10, 4)
    set_codebook(quantizer, torch.cat([batch.mean(0, keepdim=True), torch.full((7, 4), 50.0)]))
    quantizer.train()
    for step in range(1, 4):
        quantizer(as_latents(batch))
        # Unused codes count 1, 2, then reach the window of 3 and restart (counter back to 0).
        expected = 7 if step == 3 else 0
        assert int(quantizer.restart_count) == expected
        assert quantizer.steps_since_used[1:].tolist() == [step % 3] * 7
    assert quantizer.steps_since_used[0] == 0


def test_restart_on_small_ema_cluster_size():
    quantizer = build_quantizer(
        health_config(codebook_init="uniform", dead_code_restart=1000, dead_code_threshold=0.5)
    )
    batch = torch.randn(10, 4)
    quantizer.ema_cluster_size[1:] = torch.tensor([0.1, 0.1, 0.1, 0.1, 2.0, 2.0, 2.0])
    set_codebook(quantizer, torch.cat([batch.mean(0, keepdim=True), torch.full((7, 4), 50.0)]))
    quantizer.train()
    quantizer(as_latents(batch))
    # Codes 1-4 fall under 0.5 after one decay step; codes 5-7 (1.98) do not.
    assert int(quantizer.restart_count) == 4
    # (Laplace smoothing moves the kept codes by a hair, so compare approximately.)
    torch.testing.assert_close(quantizer.codebook[5:], torch.full((3, 4), 50.0), rtol=1e-4, atol=0)
    assert (quantizer.codebook[1:5] - 50).abs().min() > 10


def quantization_error(quantizer, vectors: torch.Tensor) -> float:
    codes = quantizer.quantize_codes(as_latents(vectors)).flatten()
    return float((vectors - quantizer.codebook.detach()[codes]).pow(2).sum(dim=1).mean())


def clustered_data(generator: torch.Generator) -> torch.Tensor:
    centres = torch.randn(16, 8, generator=generator) * 10
    labels = torch.arange(16).repeat_interleave(40)
    return centres[labels] + 0.1 * torch.randn(len(labels), 8, generator=generator)


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_kmeans_init_lowers_the_initial_quantization_error(update):
    data = clustered_data(torch.Generator().manual_seed(0))
    settings = dict(
        num_embeddings=16,
        embedding_dim=8,
        codebook_update=update,
        dead_code_restart=0,
        kmeans_iters=10,
    )
    torch.manual_seed(0)
    uniform = build_quantizer(health_config(**settings, codebook_init="uniform")).eval()
    kmeans = build_quantizer(health_config(**settings, codebook_init="kmeans")).train()
    with torch.no_grad():
        kmeans(as_latents(data))  # the lazy initialisation happens on the first training step
    kmeans.eval()
    uniform_error = quantization_error(uniform, data)
    kmeans_error = quantization_error(kmeans, data)
    # Uniform codes sit near the origin, so the error is about the data's mean square norm; with
    # k-means it falls to the 16 clusters' spread (8 · 0.1² = 0.08). The seeds alone, before
    # Lloyd's iterations, leave about twice that.
    assert uniform_error > 500
    assert kmeans_error < 0.1
    assert bool(kmeans.kmeans_done)


def test_kmeans_ends_at_a_lloyd_fixed_point():
    # Lloyd's iterations stop where every centroid is the mean of the rows nearest to it (by
    # explicit differences here); the k-means++ seeds alone are data rows, not such means.
    data = clustered_data(torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    centroids = kmeans(data, num_clusters=16, iterations=20)
    nearest = (data.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(dim=2).argmin(dim=1)
    for cluster in nearest.unique():
        members = data[nearest == cluster]
        assert torch.allclose(centroids[cluster], members.mean(dim=0), atol=1e-4)
    # Well-separated clusters: the error falls to their spread (8 · 0.1² = 0.08), far under
    # the ~50x larger error of two seeds sharing one cluster and one cluster left without any.
    error = float((data - centroids[nearest]).pow(2).sum(dim=1).mean())
    assert error < 0.1


def test_one_lloyd_iteration_moves_the_seeds_to_their_cluster_means():
    # Two tight pairs far apart: k-means++ seeds one row of each pair (the other pair lies
    # ~10^4 times farther in squared distance), and one Lloyd step moves each seed to its
    # pair's mean, a point that is not a data row. Without the step the seeds stay data rows.
    data = torch.tensor([[0.0], [1.0], [100.0], [101.0]])
    torch.manual_seed(0)
    centroids = kmeans(data, num_clusters=2, iterations=1)
    assert sorted(centroids.flatten().tolist()) == [0.5, 100.5]


def test_kmeans_runs_once():
    quantizer = build_quantizer(health_config(codebook_update="loss", dead_code_restart=0)).train()
    quantizer(torch.randn(2, 4, 4, 4))
    after_first = quantizer.codebook.detach().clone()
    quantizer(torch.randn(2, 4, 4, 4) + 20)  # loss mode: no other change to the codebook
    assert torch.equal(quantizer.codebook.detach(), after_first)


def test_the_kmeans_init_leaves_each_ema_code_standing_for_one_vector():
    # After the init each code stands for the one centroid it was set to (cluster size 1, sum
    # equal to the code), whatever the EMA statistics held before: sizes or sums kept from
    # earlier would pull the next update's codes off the centroids.
    torch.manual_seed(0)
    quantizer = build_quantizer(health_config(dead_code_restart=0))
    quantizer.ema_update(torch.full((8,), 5.0), torch.randn(8, 4))  # statistics moved first
    assert not quantizer.ema_cluster_size.eq(1).any()
    quantizer.initialize(torch.randn(2, 4, 3, 3))
    assert bool(quantizer.kmeans_done)
    assert quantizer.ema_cluster_size.eq(1).all()
    assert torch.equal(quantizer.ema_embed_sum, quantizer.codebook)


def test_a_non_finite_first_batch_leaves_the_kmeans_init_to_the_next():
    quantizer = build_quantizer(health_config(codebook_update="loss", dead_code_restart=0)).train()
    poisoned = torch.randn(2, 4, 4, 4)
    poisoned[0, 1, 2, 3] = float("inf")
    quantizer(poisoned)
    assert not bool(quantizer.kmeans_done)
    assert bool(torch.isfinite(quantizer.codebook).all())
    clean = torch.randn(2, 4, 4, 4)
    quantizer(clean)
    assert bool(quantizer.kmeans_done)
    # The codes are now centroids of the clean batch: every one lies inside its spread.
    assert float(quantizer.codebook.detach().abs().max()) <= float(clean.abs().max())


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("update", ["loss", "ema"])
def test_non_finite_batch_leaves_every_statistic_unchanged(update, bad_value):
    torch.manual_seed(3)
    config = health_config(codebook_update=update, codebook_init="uniform", dead_code_restart=1)
    quantizer = build_quantizer(config).train()
    quantizer(torch.randn(2, 4, 3, 3))  # one healthy step so every state is non-trivial
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    poisoned = torch.randn(2, 4, 3, 3)
    poisoned[1, 2, 0, 1] = bad_value
    quantizer(poisoned)
    for name, tensor in quantizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    quantizer(torch.randn(2, 4, 3, 3))  # a healthy batch still updates the statistics
    changed = [k for k, v in quantizer.state_dict().items() if not torch.equal(v, before[k])]
    assert "codebook" in changed


def test_a_nan_row_gets_code_0_and_an_infinite_one_a_non_finite_loss():
    # docs/codebook.md: NaN -> code 0 and a NaN loss; +-inf in coordinate d -> the first code
    # whose distance is NaN (here: inf - inf, at the first code whose coordinate d has that
    # sign), and a loss the guard catches.
    config = health_config(num_embeddings=3, codebook_update="loss", codebook_init="uniform")
    quantizer = build_quantizer(config).eval()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[-1.0, 1, 0, 0], [2, 0, 0, 0], [-3, 0, 0, 0]]))
    rows = torch.zeros(3, 4)
    rows[0, 0], rows[1, 0], rows[2, 0] = float("nan"), float("inf"), float("-inf")
    with torch.no_grad():
        assert quantizer(rows.view(3, 4, 1, 1)).codes.flatten().tolist() == [0, 1, 0]
        assert math.isnan(float(quantizer(rows[:1].view(1, 4, 1, 1)).loss))
        assert not math.isfinite(float(quantizer(rows[1:2].view(1, 4, 1, 1)).loss))


def test_kmeans_flag_restored_from_a_checkpoint_skips_the_init():
    trained = build_quantizer(health_config(codebook_update="loss", dead_code_restart=0)).train()
    trained(torch.randn(2, 4, 4, 4))
    fresh = build_quantizer(health_config(codebook_update="loss", dead_code_restart=0)).train()
    fresh.load_state_dict(trained.state_dict())
    fresh(torch.randn(2, 4, 4, 4) + 20)
    assert torch.equal(fresh.codebook.detach(), trained.codebook.detach())


def test_health_buffers_survive_a_checkpoint_exactly(tmp_path):
    torch.manual_seed(0)
    model_config = ModelConfig(hidden_dim=8, quantizer=health_config(dead_code_restart=2))
    model = VQVAE(model_config).train()
    model(torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8))  # k-means on varied outputs
    for _ in range(3):  # blank images use one code, so the others die and restart
        model(torch.zeros(4, 28, 28, dtype=torch.uint8))
    assert int(model.quantizer.restart_count) > 0  # the counters hold something to restore
    save_config(tmp_path, RunConfig(model=model_config))
    save_weights(tmp_path / runfiles.WEIGHTS, model)

    loaded = load_model(tmp_path)
    original = model.state_dict()
    restored = loaded.state_dict()
    assert set(restored) == set(original)
    for name in (
        "codebook",
        "ema_cluster_size",
        "ema_embed_sum",
        "steps_since_used",
        "restart_count",
        "kmeans_done",
    ):
        key = f"quantizer.{name}"
        assert restored[key].dtype == original[key].dtype
        assert torch.equal(restored[key], original[key]), key
    # Training on from the restored state gives the same statistics as training on the original.
    batch = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    torch.manual_seed(5)
    model(batch)
    loaded.train()
    torch.manual_seed(5)
    loaded(batch)
    for key, tensor in model.quantizer.state_dict().items():
        assert torch.equal(loaded.quantizer.state_dict()[key], tensor), key


def test_default_quantizer_weights_hold_only_the_codebook():
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(8, 4)))
    assert [k for k in model.state_dict() if k.startswith("quantizer.")] == ["quantizer.codebook"]


def rotation_matrix(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The D×D matrix of the rotation trick for one pair of vectors, built explicitly."""
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    eye = torch.eye(len(e), dtype=e.dtype)
    return eye - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)


def test_rotation_trick_forward_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    e = torch.randn(5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    q = torch.randn(5, 6, dtype=torch.float64, generator=generator)
    upstream = torch.randn(5, 6, dtype=torch.float64, generator=generator)
    out = rotation_trick(e, q)
    assert torch.equal(out.detach(), q)
    out.backward(upstream)
    for i in range(5):
        rotation = rotation_matrix(e[i].detach(), q[i])
        # A proper rotation that turns e's direction onto q's ...
        torch.testing.assert_close(rotation @ rotation.t(), torch.eye(6, dtype=torch.float64))
        torch.testing.assert_close(rotation @ e[i].detach() / e[i].norm(), q[i] / q[i].norm())
        # ... whose transpose, scaled by |q|/|e|, carries the gradient back to e.
        scale = q[i].norm() / e[i].detach().norm()
        torch.testing.assert_close(e.grad[i], scale * rotation.t() @ upstream[i])


def test_rotation_quantizer_matches_straight_through_forward():
    torch.manual_seed(0)
    ste = build_quantizer(QuantizerConfig(16, 4))
    rot = build_quantizer(QuantizerConfig(16, 4, gradient_estimator="rotation"))
    rot.load_state_dict(ste.state_dict())
    z = torch.randn(2, 4, 3, 3)
    a, b = ste(z), rot(z)
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.quantized, b.quantized)
    assert torch.equal(b.quantized.detach(), rot.codes_to_latents(b.codes).detach())
    assert a.loss.item() == pytest.approx(b.loss.item())


def test_training_logs_restarts_per_epoch(tmp_path):
    config = RunConfig()
    config.model = ModelConfig(
        hidden_dim=8,
        quantizer=QuantizerConfig(
            num_embeddings=32, embedding_dim=4, codebook_update="ema", dead_code_restart=2
        ),
    )
    config.train.epochs = 2
    config.train.batch_size = 50
    config.train.train_limit = 200
    config.train.test_limit = 100
    result = train(config, tmp_path / "run", device="cpu", progress=False)
    lines = (tmp_path / "run" / runfiles.METRICS).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    restarts = [r["codebook_restarts"] for r in records]
    # Running totals of the model's own counter (a buffer that only grows).
    assert restarts[0] > 0 and restarts == sorted(restarts)
    assert restarts[-1] == int(result.model.quantizer.restart_count)
    # Usage over the test set agrees with a direct count of the model's codes.
    from vqkit.data import load_split

    images = load_split("mnist", "test").images[:100]
    codes = result.model.encode(images).flatten()
    assert records[-1]["codes_used"] == len(torch.unique(codes))


def test_loss_mode_training_matches_the_tutorial_loss():
    torch.manual_seed(0)
    quantizer = build_quantizer(QuantizerConfig(16, 4)).train()
    z = torch.randn(2, 4, 3, 3)
    out = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    chosen = quantizer.codebook.detach()[out.codes.flatten()]
    expected = F.mse_loss(chosen, flat) * 1.25  # codebook + 0.25 · commitment, equal values
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_cluster_size_equal_to_the_threshold_is_not_dead():
    # "Restart codes whose cluster size is below the threshold": strictly below.
    steps = torch.zeros(4, dtype=torch.long)  # none has reached the window
    sizes = torch.tensor([0.25, 0.5, 0.75, 0.0])
    dead = dead_code_mask(steps, window=10, cluster_size=sizes, threshold=0.5)
    assert dead.tolist() == [True, False, False, True]
    assert not dead_code_mask(steps, 10, sizes, 0.0).any()  # threshold 0: the size test is off


def test_kmeans_plus_plus_draws_the_next_seed_by_squared_distance():
    # Rows 0, 1, 3: after the first seed a, the second is row b with probability
    # (a - b)² / Σ_c (a - c)² (Arthur and Vassilvitskii's D² weighting); weighting by the plain
    # distance would give row 3 after a = 0 with probability 3/4 instead of 9/10.
    data = torch.tensor([[0.0], [1.0], [3.0]])
    values = [0.0, 1.0, 3.0]
    torch.manual_seed(0)
    pairs = Counter(tuple(kmeans_plus_plus_seeds(data, 2).flatten().tolist()) for _ in range(3000))
    for a in values:
        trials = sum(count for (first, _), count in pairs.items() if first == a)
        assert trials > 500  # the first seed is uniform over the three rows
        total = sum((a - c) ** 2 for c in values)
        for b in values:
            p = (a - b) ** 2 / total
            assert abs(pairs[(a, b)] - trials * p) <= 5 * math.sqrt(trials * p * (1 - p)), (a, b)


def test_kmeans_keeps_the_centroid_of_a_cluster_left_empty():
    # Two distinct rows, three clusters: a repeated seed wins no rows (ties go to the first)
    # and keeps its place instead of becoming 0/0 = NaN.
    data = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, -2.0], [5.0, -2.0]])
    for seed in range(5):
        torch.manual_seed(seed)
        centroids = kmeans(data, num_clusters=3, iterations=3)
        assert torch.isfinite(centroids).all(), centroids
        assert {tuple(row) for row in centroids.tolist()} == {(0.0, 1.0), (5.0, -2.0)}


def test_rotation_trick_of_an_encoder_output_at_the_origin_is_finite():
    # A zero encoder output has no direction: the norm floor keeps the forward value exactly the
    # chosen code and the gradient finite instead of 0/0 = NaN.
    vectors = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0]], requires_grad=True)
    chosen = torch.tensor([[0.5, -0.5, 1.0], [1.0, 2.0, 0.0]])
    out = rotation_trick(vectors, chosen)
    assert torch.equal(out.detach(), chosen)
    out.sum().backward()
    assert torch.isfinite(vectors.grad).all()


def test_an_unused_ema_code_keeps_its_place_until_the_smoothing_outweighs_its_size():
    # docs/codebook.md: after t unused steps a fresh code's length is multiplied by
    # g^t / (g^t + eps) (times the smoothing's N / (N + K eps), ~1): ~1 for 500 steps at decay
    # 0.99, half near ln(1/eps) / -ln(g) ~ 1,150 steps, 3% at 1,500.
    torch.manual_seed(0)
    codes, batch_rows = 8, 6272
    quantizer = build_quantizer(
        QuantizerConfig(num_embeddings=codes, embedding_dim=2, codebook_update="ema")
    )
    start = quantizer.codebook[7].clone()
    counts = torch.zeros(codes)
    counts[0] = batch_rows  # only code 0 is chosen, always at its own place
    sums = torch.zeros(codes, 2)
    sums[0] = quantizer.codebook[0] * batch_rows
    decay, eps = 0.99, 1e-5
    kept = {}
    for step in range(1, 1501):
        quantizer.ema_update(counts, sums)
        if step in (500, 1000, 1146, 1500):
            kept[step] = float(quantizer.codebook[7].norm() / start.norm())
    for step, ratio in kept.items():
        size = decay**step  # the unused code's decayed cluster size, from 1
        total = batch_rows * (1 - size) + codes * size  # code 0's size and seven unused ones
        expected = size / ((size + eps) / (total + codes * eps) * total)
        assert ratio == pytest.approx(expected, rel=1e-3), step
    assert kept[500] > 0.998 and 0.45 < kept[1146] < 0.55 and kept[1500] < 0.03
    assert math.log(1 / eps) / -math.log(decay) == pytest.approx(1145.5, abs=0.5)


def test_kmeans_runs_again_after_loading_weights_that_have_not_had_it():
    # The quantizer remembered "k-means done" on the host: loading an untrained state (its
    # kmeans_done False) into a trained model left the codebook without k-means for good.
    torch.manual_seed(0)  # k-means++ draws its seeds from the global generator
    config = QuantizerConfig(num_embeddings=8, embedding_dim=2, codebook_init="kmeans")
    quantizer = build_quantizer(config).train()
    untrained = {name: value.clone() for name, value in quantizer.state_dict().items()}
    latents = torch.randn(4, 2, 3, 3)
    quantizer(latents)
    assert bool(quantizer.kmeans_done)
    quantizer.load_state_dict(untrained)
    assert not bool(quantizer.kmeans_done) and quantizer.needs_initialization()
    quantizer(latents + 5)
    assert bool(quantizer.kmeans_done)  # centroids of the new latents, all near (5, 5)
    assert (quantizer.codebook - 5).abs().max() < 4


def test_every_gradient_estimator_the_config_offers_has_a_function():
    assert set(ESTIMATOR_FUNCTIONS) == set(GRADIENT_ESTIMATORS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_ema_codebook_cast_to_half_precision_still_tracks_the_mean(dtype):
    # Its running statistics took the module's dtype, and in bf16 each 1% update was mostly
    # rounded away: the code settled at [0.25, -0.51] for data around [0.3, -0.7].
    torch.manual_seed(0)
    config = QuantizerConfig(num_embeddings=4, embedding_dim=2, codebook_update="ema")
    quantizer = build_quantizer(config).to(dtype).train()
    assert quantizer.codebook.dtype == dtype
    assert quantizer.ema_cluster_size.dtype == quantizer.ema_embed_sum.dtype == torch.float32
    mean, generator = torch.tensor([0.3, -0.7]), torch.Generator().manual_seed(0)
    for _ in range(2000):
        quantizer((mean + 0.05 * torch.randn(64, 2, generator=generator)).to(dtype))
    chosen = int(quantizer.ema_cluster_size.argmax())
    assert float(quantizer.ema_cluster_size[chosen]) == pytest.approx(64, abs=0.01)
    # Within the codebook's own rounding (bf16: 8 bits of mantissa) of the data's mean.
    torch.testing.assert_close(quantizer.codebook[chosen].float(), mean, atol=4e-3, rtol=0)
    assert build_quantizer(config).double().ema_embed_sum.dtype == torch.float64  # not narrowed
