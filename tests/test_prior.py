"""The PixelCNN prior: causality (exact zero gradients), the sampler's cropped computation,
seeded determinism, top-k and temperature, and the error messages of the 'prior' strategy."""

from __future__ import annotations

import math

import pytest
import torch

from vqkit.errors import VqkitError
from vqkit.prior import PixelCNNPrior, PriorConfig, gate, restrict_logits, sample_prior
from vqkit.prior_loop import PriorLoop, code_nll, prior_loss
from vqkit.prior_training import CodeSet, evaluate_nll

GRID = 7
CODES = 11


def tiny_prior(conditional: bool, layers: int = 4, kernel_size: int = 3) -> PixelCNNPrior:
    torch.manual_seed(0)
    config = PriorConfig(
        num_codes=CODES,
        grid_size=GRID,
        channels=8,
        layers=layers,
        kernel_size=kernel_size,
        conditional=conditional,
        num_classes=3,
        dropout=0.5,
    )
    return PixelCNNPrior(config).eval()


def random_codes(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, CODES, (batch, GRID, GRID), generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread than on two contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def input_gradients(prior: PixelCNNPrior, codes, labels) -> torch.Tensor:
    """|d logits(i) / d embedded input(j)| summed over channels, for every output position i.

    -> (B, H·W, H, W). One backward pass: the batch holds H·W copies of each grid and copy i
    back-propagates from position i only (samples never interact, so the gradients separate).
    """
    positions = GRID * GRID
    batch = codes.shape[0]
    x = prior.embed(codes).detach().repeat_interleave(positions, dim=0).requires_grad_(True)
    repeated = None if labels is None else labels.repeat_interleave(positions)
    logits = prior.forward_embedded(x, repeated).flatten(2)  # (B·HW, K, HW)
    # A random projection of all K logits, so no logit can hide behind a cancellation.
    weights = torch.randn(logits.shape[1], generator=torch.Generator().manual_seed(0))
    pick = torch.arange(positions).repeat(batch)
    (logits[torch.arange(batch * positions), :, pick] * weights).sum().backward()
    return x.grad.abs().sum(dim=1).view(batch, positions, GRID, GRID)


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_logits_never_depend_on_the_current_or_later_positions(conditional, kernel_size):
    prior = tiny_prior(conditional, layers=6, kernel_size=kernel_size)
    codes = random_codes(2)
    labels = torch.tensor([0, 2]) if conditional else None
    order = torch.arange(GRID * GRID).view(GRID, GRID)  # raster index of every position
    grads = input_gradients(prior, codes, labels)
    for i in range(GRID * GRID):
        grad = grads[:, i]
        assert torch.all(grad[:, order >= i] == 0), f"position {i} sees the future"
        if i > 0:
            # The converse: the position does use what came before (so the test can fail).
            assert torch.all(grad[:, order == i - 1] > 0), f"position {i} ignores position {i - 1}"
            assert torch.all(grad[:, order < i].sum(dim=1) > 0)


@pytest.mark.parametrize("layers", [5, 6, 7])
def test_no_blind_spot_with_enough_layers(layers):
    """Every earlier position influences every later one (a masked PixelCNN misses a wedge)
    once L·(k//2) >= 6: the first column must see the last column of the row above. With
    5 layers of kernel 3 some pairs are out of reach, so the test can tell."""
    grad = input_gradients(tiny_prior(False, layers=layers), random_codes(1), None)[0]
    order = torch.arange(GRID * GRID)
    earlier = order.view(1, GRID, GRID) < order.view(-1, 1, 1)  # (position, H, W)
    seen = grad[earlier] > 0
    assert bool(seen.all()) == (layers >= 6), int((~seen).sum())


def test_mask_a_would_be_caught():
    """Sanity check of the causality test itself: without the first layer's shift, it fails."""
    prior = tiny_prior(False)
    prior.layers[0].first = False  # the first horizontal layer now sees its own position
    grad = input_gradients(prior, random_codes(1), None)[0, 3 * GRID + 3]
    assert grad[3, 3] > 0


def test_gate_is_tanh_of_the_first_half_times_sigmoid_of_the_second():
    # Channels 0-1 are a, channels 2-3 are b: tanh(a) · sigmoid(b), by hand.
    x = torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, 4, 1, 1)
    expected = [math.tanh(0.5) * 0.5, math.tanh(-1.0) / (1 + math.exp(-2.0))]
    torch.testing.assert_close(gate(x).flatten(), torch.tensor(expected))


def test_the_label_bias_reaches_the_logits_through_both_stacks():
    # Every layer's horizontal gate bias acts on the logits; every vertical gate bias but the
    # last layer's does too (the last vertical output feeds no further layer). Dropping the
    # vertical bias would leave conditioning working through the horizontal stack alone.
    prior = tiny_prior(True, layers=3)
    prior(random_codes(2), torch.tensor([0, 2])).sum().backward()
    grad = prior.label_bias.weight.grad.view(3, prior.config.layers, 2, -1)  # class, layer, stack
    per_gate = grad.abs().sum(dim=(0, 3))  # (layers, 2)
    assert torch.all(per_gate[:, 1] > 0), "a horizontal gate ignores the label"
    assert torch.all(per_gate[:-1, 0] > 0), "a vertical gate ignores the label"
    assert per_gate[-1, 0] == 0


def test_dropout_acts_in_training_and_not_in_evaluation():
    prior = tiny_prior(False)  # dropout 0.5
    codes = random_codes(2)
    with torch.no_grad():
        evaluated = prior(codes)
        assert torch.equal(prior(codes), evaluated)
        prior.train()
        torch.manual_seed(0)
        trained = prior(codes)
    assert not torch.allclose(trained, evaluated)


@pytest.mark.parametrize("training", [False, True])
def test_sampling_leaves_the_prior_in_the_mode_it_found(training):
    prior = tiny_prior(False).train(training)
    sample_prior(prior, 2, torch.Generator().manual_seed(0))
    assert prior.training == training


@pytest.mark.parametrize("interrupted", ["sample", "evaluate"])
def test_an_interrupted_pass_leaves_the_prior_training(interrupted, monkeypatch):
    # A Ctrl-C in a notebook once left the prior in eval mode: trained on, without dropout.
    prior = tiny_prior(False).train()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prior, "row_logits", stop)
    monkeypatch.setattr(prior, "forward", stop)
    with pytest.raises(KeyboardInterrupt):
        if interrupted == "sample":
            sample_prior(prior, 2, torch.Generator().manual_seed(0))
        else:
            codes = random_codes(2)
            evaluate_nll(prior, CodeSet(codes, torch.zeros(2, dtype=torch.long)), 2)
    assert all(module.training for module in prior.modules())  # dropout layers included


@pytest.mark.parametrize("conditional", [False, True])
def test_sampler_crops_give_the_full_forward_logits(conditional):
    prior = tiny_prior(conditional)
    codes = random_codes(3)
    labels = torch.tensor([0, 1, 2]) if conditional else None
    with torch.no_grad():
        full = prior(codes, labels)
        conditions = prior.conditions(labels)
        for row in range(GRID):
            context = prior.vertical_context(codes[:, :row], conditions)
            for col in range(GRID):
                part = prior.row_logits(codes[:, row : row + 1, : col + 1], context, conditions)
                torch.testing.assert_close(part[:, :, 0, col], full[:, :, row, col])


def test_output_shape_and_normalised_distribution():
    prior = tiny_prior(True)
    logits = prior(random_codes(4), torch.tensor([0, 1, 2, 0]))
    assert logits.shape == (4, CODES, GRID, GRID)
    torch.testing.assert_close(logits.softmax(dim=1).sum(dim=1), torch.ones(4, GRID, GRID))


def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds():
    prior = tiny_prior(False)
    a = sample_prior(prior, 16, torch.Generator().manual_seed(5))
    b = sample_prior(prior, 16, torch.Generator().manual_seed(5))
    c = sample_prior(prior, 16, torch.Generator().manual_seed(6))
    assert a.shape == (16, GRID, GRID) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < CODES


def test_top_k_one_and_low_temperature_are_greedy_decoding():
    """With top-k 1 every code is the argmax of the full forward pass given the codes before it."""
    prior = tiny_prior(True)
    labels = torch.tensor([0, 1, 2, 1])
    greedy = sample_prior(prior, 4, torch.Generator().manual_seed(0), labels, top_k=1)
    with torch.no_grad():
        assert torch.equal(prior(greedy, labels).argmax(dim=1), greedy)
    cold = sample_prior(prior, 4, torch.Generator().manual_seed(9), labels, temperature=1e-4)
    assert torch.equal(cold, greedy)


def test_top_k_restricts_the_support():
    prior = tiny_prior(False)
    codes = sample_prior(prior, 64, torch.Generator().manual_seed(2), top_k=3)
    with torch.no_grad():
        top3 = prior(codes).topk(3, dim=1).indices  # (B, 3, H, W)
    assert torch.all((top3 == codes.unsqueeze(1)).any(dim=1))


def test_restrict_logits_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = restrict_logits(logits, temperature=2.0, top_k=2)
    expected = torch.tensor([[float("-inf"), 1.5, 1.0, float("-inf")]])
    assert torch.equal(out, expected)
    # Ties with the k-th largest are all kept, not an arbitrary k of them.
    tied = restrict_logits(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), top_k=2)
    assert torch.equal(tied, torch.tensor([[1.0, 1.0, 1.0, float("-inf")]]))


def test_bad_sampling_settings_are_refused():
    prior = tiny_prior(False)
    with pytest.raises(VqkitError, match="temperature"):
        sample_prior(prior, 2, torch.Generator(), temperature=0.0)
    with pytest.raises(VqkitError, match="top-k"):
        sample_prior(prior, 2, torch.Generator(), top_k=0)
    with pytest.raises(VqkitError, match="unconditional"):
        sample_prior(prior, 2, torch.Generator(), labels=torch.tensor([0, 1]))
    with pytest.raises(VqkitError, match="conditional"):
        sample_prior(tiny_prior(True), 2, torch.Generator())


@pytest.mark.parametrize(
    "n,labels,message",
    [
        (2, [0, 1, 2], r"shape \(2,\), one per grid; these have \(3,\)"),
        (2, [1, 20], "lie in 0 to 2 for this prior's 3 classes; these range from 1 to 20"),
        (2, [0, 3], "lie in 0 to 2 for this prior's 3 classes; these range from 0 to 3"),
        (2, [-1, 0], "range from -1 to 0"),
        (2, [0.5, 1.0], "labels must hold integers, not torch.float32"),
        (2, "ab", "labels must be a tensor or array of integers, not a str"),
        ("3", None, r"number of grids to sample \(n\) must be a whole number"),
        (-1, None, "at least 0"),
    ],
)
def test_bad_sampler_arguments_from_python_are_one_sentence(n, labels, message):
    prior = tiny_prior(True)  # 3 classes
    labels = labels if labels is not None else [0] * 2
    with pytest.raises(VqkitError, match=message):
        sample_prior(prior, n, torch.Generator(), labels=labels)


def test_labels_as_a_list_and_zero_grids_are_taken():
    prior = tiny_prior(True)
    as_list = sample_prior(prior, 3, torch.Generator().manual_seed(1), labels=[0, 2, 1])
    as_tensor = sample_prior(prior, 3, torch.Generator().manual_seed(1), torch.tensor([0, 2, 1]))
    assert torch.equal(as_list, as_tensor)
    assert sample_prior(prior, 0, torch.Generator(), labels=[]).shape == (0, GRID, GRID)
    with pytest.raises(VqkitError, match="The generator must be a Generator"):
        sample_prior(prior, 1, 0, labels=[0])


def test_config_rejects_bad_values_and_round_trips():
    config = PriorConfig(num_codes=16, channels=4, conditional=True)
    assert PriorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(VqkitError, match="kernel size must be an odd number >= 3, not 4"):
        PriorConfig(kernel_size=4)
    with pytest.raises(VqkitError, match="dropout must be in"):
        PriorConfig(dropout=1.0)
    with pytest.raises(VqkitError, match="precision"):
        PriorConfig(precision="fp16")
    with pytest.raises(VqkitError, match="unknown"):
        PriorConfig.from_dict({**config.to_dict(), "colour": 3})


def test_draw_follows_the_softmax():
    from vqkit.prior import draw

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(40000, 1)
    counts = torch.bincount(draw(logits, torch.Generator().manual_seed(3)), minlength=4)
    expected = logits[0].softmax(0) * 40000
    # Each count is within 5 binomial standard deviations of its expectation.
    assert torch.all((counts - expected).abs() < 5 * expected.sqrt())


def test_a_uniform_draw_of_exactly_zero_still_picks_by_the_logits(monkeypatch):
    # torch.rand draws from [0, 1), so 0 itself can come: unclamped, -log(-log 0) is -inf noise
    # on every code, and the argmax of a row of -inf is code 0 whatever the logits say. With
    # the same (finite) noise on every code the draw is the largest logit.
    from vqkit.prior import draw

    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.zeros(shape))
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 5.0]])
    assert draw(logits, torch.Generator()).tolist() == [1, 2]


def test_evaluate_nll_is_the_mean_cross_entropy_in_bits():
    # 10 grids in batches of 3 (a short last batch), each with its own label.
    prior = tiny_prior(True)
    data = CodeSet(random_codes(10), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    with torch.no_grad():
        logits = prior(data.codes, data.labels).double()
    nats = torch.nn.functional.cross_entropy(logits, data.codes)
    assert evaluate_nll(prior, data, batch_size=3) == pytest.approx(float(nats) / math.log(2))


def test_training_loss_under_bf16_autocast_is_taken_in_fp32():
    """Autocast may run the network in bf16, but the loss over its logits must not be rounded
    to bf16 (up to 0.02 bits per batch): it equals a float64 cross-entropy of the same logits."""
    prior = tiny_prior(True)
    codes, labels = random_codes(64), torch.arange(64) % 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = prior_loss(prior, codes, labels)
        logits = prior(codes, labels)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    expected = torch.nn.functional.cross_entropy(logits.double(), codes)
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)


def test_a_prior_that_predicts_nothing_costs_log2_k_bits_per_code():
    prior = tiny_prior(False)
    last = prior.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    data = CodeSet(random_codes(5), torch.zeros(5, dtype=torch.long))
    assert evaluate_nll(prior, data, batch_size=2) == pytest.approx(math.log2(CODES))


def test_the_class_label_steers_what_the_sampler_draws():
    # Grids of class c hold code c everywhere, so only the label tells the first position's
    # code: a prior that ignored its label could not get it right more than a third of the time.
    prior = tiny_prior(True, layers=2)
    prior.train()
    labels = torch.arange(3).repeat(8)
    codes = labels.view(-1, 1, 1).expand(-1, GRID, GRID).contiguous()
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(60):
        nll = torch.nn.functional.cross_entropy(prior(codes, labels), codes)
        optimizer.zero_grad()
        nll.backward()
        optimizer.step()
    wanted = torch.tensor([2, 0, 1, 2, 1, 0] * 5)
    drawn = sample_prior(prior, len(wanted), torch.Generator().manual_seed(0), wanted)
    first = drawn[:, 0, 0]
    assert torch.equal(first, wanted)
    assert (drawn == wanted.view(-1, 1, 1)).float().mean() > 0.95


def test_a_conditional_prior_trains_each_grid_with_its_own_label(tmp_path):
    """Grids of class c are filled with code c, so only the label can predict the top-left
    code (it has no context). Trained with its labels the prior learns that (about 0.2 bits
    after these 60 steps); trained with labels paired to other grids it cannot beat
    log2(10) = 3.3 bits there."""
    labels = torch.arange(400) % 10
    codes = labels.view(-1, 1, 1).expand(-1, 7, 7).contiguous()
    settings = PriorConfig(
        num_codes=10, channels=8, layers=1, conditional=True, epochs=6, patience=6,
        batch_size=40, lr=2e-2, dropout=0.0, precision="fp32",
    )  # fmt: skip
    loop = PriorLoop(
        tmp_path, settings, torch.device("cpu"), codes=codes, labels=labels,
        evaluate=lambda prior: 0.0, constants={}, digest="", resume=False, show=False,
    )  # fmt: skip
    loop.train()
    loop.prior.eval()
    with torch.no_grad():
        first = code_nll(loop.prior(codes, labels), codes)[:, 0, 0].mean() / math.log(2)
    assert float(first) < 1.0


def test_a_prior_and_each_of_its_layers_take_half_precision():
    # A layer's padding was kept as `half`, which hid nn.Module.half(): calling it raised.
    prior = PixelCNNPrior(PriorConfig(num_codes=16, channels=8, layers=2))
    for layer in prior.layers:
        assert layer.half() is layer
        assert all(p.dtype == torch.float16 for p in layer.parameters())
    assert prior.half() is prior
    assert all(p.dtype == torch.float16 for p in prior.parameters())
