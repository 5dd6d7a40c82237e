"""The Python API at its edges: device names, image and code tensors of the wrong kind, a prior
that does not fit its model, weights that blow up, and a demo refused before any folder."""

from __future__ import annotations

import gc
import json
import re
import weakref

import numpy as np
import pytest
import torch
from report_helpers import make_full_run, train_on

from vqkit import runfiles
from vqkit.checkpoint import load_config, prior_is_stale
from vqkit.classifier import ClassifierConfig, train_classifier
from vqkit.codes_io import decode_codes, encode_images, load_codes, save_codes
from vqkit.config import QuantizerConfig, RunConfig, TrainConfig, preset_config
from vqkit.data import load_split, write_own_dataset
from vqkit.demo import DemoSettings, run_demo
from vqkit.errors import InvalidValue, OutOfMemory, VqkitError, out_of_memory_said
from vqkit.evaluate import evaluate_run
from vqkit.generate import SamplingContext, sample_codes, sample_images
from vqkit.interpolate import interpolation
from vqkit.model import VQVAE
from vqkit.prior import PriorConfig, load_prior
from vqkit.prior_training import train_prior
from vqkit.report import write_report
from vqkit.score import score_run
from vqkit.training import train
from vqkit.usage import code_usage


@pytest.fixture(scope="module")
def model(small_run) -> VQVAE:
    return VQVAE.from_run(small_run.run_dir, device="auto")  # 'auto', as every command takes


@pytest.mark.parametrize(("device", "fragment"), [("tpu", "Unknown device"), (None, "string")])
def test_a_bad_device_for_a_saved_model_is_one_sentence(small_run, device, fragment):
    with pytest.raises(InvalidValue, match=fragment):
        VQVAE.from_run(small_run.run_dir, device=device)


def test_integer_pixels_encode_as_uint8_ones_do(model):
    pixels = torch.randint(0, 256, (4, 28, 28))
    assert torch.equal(model.encode(pixels), model.encode(pixels.to(torch.uint8)))
    assert torch.equal(model.encode(pixels.int()), model.encode(pixels.to(torch.uint8)))
    with pytest.raises(InvalidValue, match="pixels 0-255, and these range from 0 to 300"):
        model.encode(torch.tensor([0, 300]).repeat(392).view(1, 28, 28))


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        ("image.png", "must be a torch tensor"),
        (torch.zeros(28, 28, dtype=torch.uint8), "has shape (28, 28)"),
        (torch.zeros(1, 1, 1, 28, 28, dtype=torch.uint8), "has shape (1, 1, 1, 28, 28)"),
        (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "these have shape (2, 3, 28, 28)"),
        (torch.zeros(2, 32, 32, dtype=torch.uint8), "these have shape (2, 32, 32)"),
        (torch.zeros(2, 28, 28, dtype=torch.bool), "not torch.bool"),
    ],
    ids=["str", "2-d", "5-d", "rgb", "32x32", "bool"],
)
def test_images_of_the_wrong_kind_are_one_sentence(model, images, fragment):
    with pytest.raises(InvalidValue) as refused:
        model.encode(images)
    assert fragment in str(refused.value)


def test_code_grids_of_the_wrong_shape_are_one_sentence_and_narrow_integers_decode(model):
    codes = model.encode(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    assert torch.equal(model.decode(codes.to(torch.uint8)), model.decode(codes))
    for bad in (codes[0], codes[:, :6, :6], codes.unsqueeze(0)):
        with pytest.raises(InvalidValue, match=r"shape \(B, 7, 7\)"):
            model.decode(bad)
    with pytest.raises(InvalidValue, match="must be a torch tensor"):
        model.decode(codes.tolist())
    # decode_codes (the batched decoder of the docs' Python entry points) takes NumPy grids
    # too: it raised AttributeError ('numpy.ndarray' object has no attribute 'split').
    assert torch.equal(decode_codes(model, codes.numpy(), 1), decode_codes(model, codes, 1))
    with pytest.raises(InvalidValue, match=r"Code grids \(N, h, w\) must hold integers"):
        decode_codes(model, codes.numpy().astype(np.float32), 1)


def test_a_prior_is_judged_against_the_model_only_when_its_weights_load(gridded_copy):
    train_prior(
        gridded_copy, PriorConfig(channels=8, layers=2, epochs=1, train_limit=256, test_limit=64)
    )
    weights = gridded_copy / runfiles.WEIGHTS
    original = weights.read_bytes()
    weights.write_bytes(original[:1000])  # damaged: loading says so, not "stale"
    assert not prior_is_stale(gridded_copy)
    weights.write_bytes(original)
    train_on(gridded_copy)  # other weights, still valid: the prior is stale
    assert prior_is_stale(gridded_copy)
    weights.write_bytes(original)
    # A prior_config.json edited to another grid than the model's is refused by name.
    path = gridded_copy / runfiles.PRIOR_CONFIG
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, "grid_size": 9}))
    misfit = "on a 9×9 grid, but the run.s model has 128 codes on a 7×7 grid"
    with pytest.raises(VqkitError, match=misfit):
        load_prior(gridded_copy)
    # Sizes other than the weights' are refused before a network of them is built: 10**9
    # layers hung the command building them.
    for name, value, stored in (  # the small ones first: without the check they fail fast
        ("layers", 3, 2),
        ("kernel_size", 5, 3),
        ("channels", 10**9, 8),
        ("layers", 10**9, 2),
    ):
        path.write_text(json.dumps({**settings, name: value}))
        said = f"say {name} {value}, but its weights .prior.safetensors. have {name} {stored};"
        with pytest.raises(VqkitError, match=said):
            load_prior(gridded_copy)


def test_training_leaves_the_callers_random_numbers_alone(run_copy, tmp_path):
    # train, train_prior and the scoring classifier seed PyTorch's global generator: a script
    # training in a loop then drew vqkit's numbers after the first call, whatever its own seed.
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.test_limit = 1, 64, 32
    tiny_prior = PriorConfig(channels=8, layers=2, epochs=1, train_limit=64, test_limit=32)
    classifier = ClassifierConfig(channels=(4, 8), features=8, epochs=1, train_limit=64)
    calls = {
        "train": lambda: train(config, tmp_path / "fresh", device="cpu", progress=False),
        "train_prior": lambda: train_prior(run_copy, tiny_prior, device="cpu", progress=False),
        "train_classifier": lambda: train_classifier(classifier, device="cpu"),
    }
    for name, call in calls.items():
        torch.manual_seed(1234)
        expected = torch.rand(4)
        torch.manual_seed(1234)
        call()
        assert torch.equal(torch.rand(4), expected), name


def test_weights_that_blow_up_stop_the_run_before_their_epoch_is_saved(tmp_path):
    config = preset_config("efficient")
    config.train.epochs, config.train.lr = 1, 1e30
    config.train.train_limit, config.train.test_limit = 64, 32
    with pytest.raises(VqkitError, match="became non-finite in epoch 1"):
        train(config, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run" / runfiles.WEIGHTS).exists()


@pytest.mark.parametrize(
    ("out", "device", "reason"),
    [("", "cpu", "run folder name is empty"), ("demo", "tpu", "Unknown device 'tpu'")],
    ids=["empty", "tpu"],
)
def test_a_refused_demo_leaves_no_folder(out, device, reason, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logged: list[str] = []
    with pytest.raises(InvalidValue, match=reason):
        run_demo(out, device=device, progress=False, log=logged.append)
    assert list(tmp_path.iterdir()) == []
    assert logged == []  # refused before announcing its first stage


def test_a_demo_into_a_trained_run_is_refused_and_leaves_it_alone(run_copy):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    taken = "already holds a run \\(finished or not\\), and the demo trains its"
    with pytest.raises(VqkitError, match=taken):
        run_demo(run_copy, device="cpu", progress=False, log=lambda line: None)
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("run_dir", "fragment"),
    [("", "name is empty"), (None, "not None"), (7, "not 7"), (b"run", "not b'run'")],
    ids=["empty", "none", "int", "bytes"],
)
@pytest.mark.parametrize(
    "reader",
    [VQVAE.from_run, evaluate_run, write_report, train_prior, lambda run: score_run(run, 5)],
    ids=["from_run", "evaluate_run", "write_report", "train_prior", "score_run"],
)
def test_a_run_folder_that_is_not_a_path_is_one_sentence(reader, run_dir, fragment, tmp_path,
                                                          monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # an empty name must not mean this folder
    with pytest.raises(InvalidValue, match=fragment):
        reader(run_dir)


@pytest.mark.parametrize("n", [2.5, None, "5", True, 1])
def test_a_score_count_that_is_not_a_whole_number_of_two_or_more_is_refused(small_run, n):
    with pytest.raises(
        VqkitError, match=r"scored per row \(--n\) must be a whole number of at least 2"
    ):
        score_run(small_run.run_dir, n)


# Each call passes one argument of the wrong type or value; what the sentence must name.
WRONG_ARGUMENTS = {
    "sample count text": (lambda m, run: sample_codes("random", "3", SamplingContext(m)), "'3'"),
    "sample count 2.5": (lambda m, run: sample_codes("random", 2.5, SamplingContext(m)), "2.5"),
    "no context": (lambda m, run: sample_codes("random", 2, None), "SamplingContext"),
    "generator int": (lambda m, run: sample_codes("random", 2, SamplingContext(m), 3), "Generator"),
    "sample seed": (lambda m, run: sample_images(SamplingContext(m), "random", 2, "x"), "seed"),
    "steps None": (lambda m, run: interpolation(m, DIGIT, DIGIT, None), "steps"),
    "interpolation seed": (lambda m, run: interpolation(m, DIGIT, DIGIT, 3, seed=1.5), "seed"),
    "prior settings dict": (lambda m, run: train_prior(run, {"epochs": 1}), "PriorConfig"),
    "score seed": (lambda m, run: score_run(run, 5, seed="x"), "seed"),
    "demo settings dict": (lambda m, run: run_demo(run / "demo", {"epochs": 1}), "DemoSettings"),
    "train folder int": (lambda m, run: train(preset_config("efficient"), 123), "not 123"),
    "train data folder": (lambda m, run: train(preset_config("efficient"), data_dir=5), "not 5"),
    "evaluate data folder": (lambda m, run: evaluate_run(run, data_dir=5), "--data-dir"),
    "score data folder": (lambda m, run: score_run(run, 5, data_dir=5), "--data-dir"),
    "score classifier dict": (
        lambda m, run: score_run(run, 5, classifier_config={}),
        "ClassifierConfig",
    ),
    "interpolation model": (lambda m, run: interpolation(None, DIGIT, DIGIT, 3), "VQVAE"),
    "interpolation image": (lambda m, run: interpolation(m, "3", DIGIT, 3), "Image A"),
    "interpolation shapes": (
        lambda m, run: interpolation(m, DIGIT, torch.zeros(32, 32), 3, "latent"),
        "(28, 28) and (32, 32)",
    ),
    "latent image size": (
        lambda m, run: interpolation(m, torch.zeros(32, 32), torch.zeros(32, 32), 3, "latent"),
        "one 28×28 image, of shape (28, 28) or (1, 28, 28); these have shape (32, 32)",
    ),
    "interpolation batches": (
        lambda m, run: interpolation(m, torch.zeros(2, 28, 28), torch.zeros(2, 28, 28), 3),
        "must each be one 28×28 image, of shape (28, 28) or (1, 28, 28); these have shape (2, 28",
    ),
    "interpolation rows": (
        lambda m, run: interpolation(m, torch.zeros(28), torch.zeros(28), 3),
        "these have shape (28,).",
    ),
    "quantizer array": (
        lambda m, run: m.quantizer(np.zeros((2, 32, 7, 7))),
        "takes latents as a torch tensor (B, 32, ...), not a ndarray",
    ),
    "quantizer channels": (
        lambda m, run: m.quantizer.quantize_codes(torch.zeros(2, 7, 7, 32)),
        "(B, 32, ...) with the 32 channels second ((B, 32, H, W) for images, (B, 32, T) for "
        "sequences: x.transpose(1, 2) for (B, T, 32)); these have shape (2, 7, 7, 32).",
    ),
    "quantizer bool latents": (  # raised from the rotation estimator inside
        lambda m, run: m.quantizer(torch.zeros(2, 32, 7, 7, dtype=torch.bool)),
        "takes latents of a float type, not torch.bool",
    ),
    "quantizer complex codes": (  # the imaginary part was dropped with a warning
        lambda m, run: m.quantizer.quantize_codes(torch.zeros(2, 32, 7, 7, dtype=torch.cfloat)),
        "not torch.complex64",
    ),
    "prior setting text": (lambda m, run: PriorConfig(epochs="3"), "'epochs' must be an integer"),
    "train setting float": (
        lambda m, run: TrainConfig(batch_size=2.0),
        "'batch_size' must be an integer",
    ),
    "demo setting text": (lambda m, run: DemoSettings(epochs="x"), "'epochs' must be an integer"),
    "demo seed": (lambda m, run: DemoSettings(seed=True), "--seed must be"),
    "own dataset split": (lambda m, run: write_own_dataset(run / "own", "x", None), "pair"),
    "classifier seed": (lambda m, run: ClassifierConfig(seed="x"), "classifier's seed"),
    "demo classifier dict": (lambda m, run: DemoSettings(classifier={}), "ClassifierConfig"),
    "demo score samples": (lambda m, run: DemoSettings(score_samples=1), "at least 2, not 1"),
    "demo pair text": (lambda m, run: DemoSettings(interpolation_pair=(3, "8")), "two class"),
    "demo pair class": (
        lambda m, run: run_demo(run / "demo", DemoSettings(interpolation_pair=(3, 42))),
        "classes are 0 to 9",
    ),
    "demo folder int": (lambda m, run: run_demo(5), "not 5"),
    # The batched helpers generation.md names: torch's own errors before.
    "encode batch zero": (lambda m, run: encode_images(m, DIGIT[None], 0), "batch size must be"),
    "encode batch text": (lambda m, run: encode_images(m, DIGIT[None], "4"), "not '4'"),
    "encode array": (lambda m, run: encode_images(m, DIGIT[None].numpy(), 4), "must be a Tensor"),
    "encode no model": (lambda m, run: encode_images(None, DIGIT[None], 4), "must be a VQVAE"),
    "decode batch float": (
        lambda m, run: decode_codes(m, torch.zeros(1, 7, 7, dtype=torch.long), 2.5),
        "not 2.5",
    ),
    "load codes count text": (
        lambda m, run: load_codes(run / "x.npy", "32", 7),
        "number of codes must be a whole number of at least 1, not '32'",
    ),
    "load codes no path": (lambda m, run: load_codes(None, 32, 7), "is a path"),
    "save codes no path": (lambda m, run: save_codes(torch.zeros(1, 7, 7).long(), None), "path"),
    "fsq levels text": (  # a tuple is taken as the list it holds
        lambda m, run: QuantizerConfig(quantizer="fsq", fsq_levels="8,5"),
        "must be a list, not '8,5' (type str)",
    ),
}
DIGIT = torch.zeros(28, 28)


@pytest.mark.parametrize("call, fragment", WRONG_ARGUMENTS.values(), ids=WRONG_ARGUMENTS)
def test_a_wrong_argument_from_python_is_one_sentence_naming_it(
    call, fragment, model, run_copy, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where a wrongly accepted folder name would be made
    with pytest.raises(InvalidValue, match=re.escape(fragment)) as raised:
        call(model, run_copy)
    assert str(raised.value).endswith(".") and "\n" not in str(raised.value)
    assert not (run_copy / "demo").exists() and list(tmp_path.iterdir()) == [run_copy]


def test_a_compiled_model_interpolates_as_the_model_itself(model):
    compiled = torch.compile(model)  # compiles nothing until called; interpolation unwraps it
    for mode in ("crossfade", "latent"):
        expected = interpolation(model, DIGIT, DIGIT + 0.8, 4, mode)
        assert torch.equal(interpolation(compiled, DIGIT, DIGIT + 0.8, 4, mode), expected)


def test_whole_numbers_of_any_integer_type_are_accepted(model):
    context = SamplingContext(model)
    assert sample_codes("random", np.int64(3), context).shape == (3, 7, 7)
    assert interpolation(model, DIGIT, DIGIT, np.int32(4)).shape == (4, 7, 7)
    # The batch sizes too: torch's split took no NumPy integer.
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    codes = encode_images(model, images, np.int64(2))
    assert decode_codes(model, codes, np.int32(2)).shape == (3, 1, 28, 28)
    assert sample_images(context, "random", 3, batch_size=np.int64(2))[1].shape[0] == 3


@pytest.mark.parametrize(
    ("call", "less"),
    [
        (lambda m: sample_codes("random", 2**62, SamplingContext(m)), "a smaller n"),
        (lambda m: sample_images(SamplingContext(m), "random", 2**40), "a smaller n"),
        (lambda m: interpolation(m, DIGIT, DIGIT, 10**12), "fewer steps"),
        (lambda m: interpolation(m, DIGIT, DIGIT, 10**12, "latent"), "fewer steps"),
    ],
    ids=["sample-codes", "sample-images", "crossfade", "latent"],
)
def test_more_than_memory_holds_is_one_sentence_from_python_too(model, call, less):
    # PyTorch's own allocation errors came through ("Storage size calculation overflowed").
    with pytest.raises(
        OutOfMemory, match=f"^Out of memory .*; ask for less at once: {less}.$"
    ) as oom:
        call(model)
    # PyTorch's error keeps no frames: they would hold the tensors (a GPU's memory) alive.
    assert oom.value.__suppress_context__ and oom.value.__context__.__traceback__ is None
    assert (
        "Storage size calculation overflowed" in oom.value.failure
        or "allocate" in oom.value.failure
    )


def test_a_kept_out_of_memory_error_holds_no_tensor_of_the_failed_call():
    # A notebook keeps the last error (sys.last_traceback): PyTorch's frames in it held the
    # tensors of the call, and on a GPU their memory.
    probe = []

    def fails_after_allocating():
        held = torch.zeros(1000)
        probe.append(weakref.ref(held))
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"
        )

    with pytest.raises(OutOfMemory) as oom:
        with out_of_memory_said("less"):
            fails_after_allocating()
    kept = oom.value  # noqa: F841 (what a caller keeps)
    gc.collect()
    assert probe[0]() is None
    with out_of_memory_said("less"):  # nothing raised: nothing said
        pass
    with pytest.raises(RuntimeError, match="another failure"), out_of_memory_said("less"):
        raise RuntimeError("another failure")


def test_a_count_beyond_64_bits_is_one_sentence():
    # torch.randint raised TypeError "Overflow when unpacking long long".
    with pytest.raises(
        InvalidValue, match="must fit a 64-bit integer \\(< 2\\*\\*63\\), not 18446"
    ):
        sample_codes("random", 2**64, SamplingContext(VQVAE(preset_config("efficient").model)))


def test_a_python_resume_with_other_settings_is_refused_and_changes_nothing(run_copy):
    """As the CLI refuses --lr on --resume: a resume may change only the epochs and how the
    run survives faults, or it would learn something else under the old run's name."""
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    changed = load_config(run_copy)
    changed.train.epochs, changed.train.lr = 2, 0.05
    changed.model.quantizer.beta = 0.9
    with pytest.raises(VqkitError, match=r"model.quantizer.beta is 0.25 there, 0.9 here; "):
        train(changed, run_copy, device="cpu", progress=False, resume=True)
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before


def test_a_sampling_context_checks_its_model_and_that_it_is_the_runs(run_copy):
    """The run's prior and code usage describe the codes of its own model: a context pairing
    it with another model would sample (and cache usage) for the wrong codebook."""
    with pytest.raises(VqkitError, match="The model must be a VQVAE"):
        SamplingContext(5)
    with pytest.raises(VqkitError, match="The run folder is a path"):
        SamplingContext(VQVAE.from_run(run_copy), 7)
    other = VQVAE(preset_config("default").model)
    with pytest.raises(VqkitError, match="is not the one trained in"):
        SamplingContext(other, run_copy)
    context = SamplingContext(VQVAE.from_run(run_copy), str(run_copy))
    assert context.run_dir == run_copy  # a str folder becomes a Path
    # The same settings with other weights: an untrained model, or the run's own one changed.
    changed = VQVAE.from_run(run_copy)
    with torch.no_grad():
        changed.quantizer.codebook[0] += 1.0
    for model in (VQVAE(load_config(run_copy).model), changed):
        with pytest.raises(VqkitError, match="its weights are not the ones in model.safetens"):
            SamplingContext(model, run_copy)
        # counting usage with it would have cached its counts under the run's weights
        with pytest.raises(VqkitError, match="is not the one trained in"):
            code_usage(run_copy, model)
        assert not (run_copy / runfiles.CODE_USAGE).exists()
    # Layout and mode are not weights: the run's model in channels-last training mode is its own.
    SamplingContext(
        VQVAE.from_run(run_copy).to(memory_format=torch.channels_last).train(), run_copy
    )
    # A floating type is (its codes may differ, and code usage would be cached as the run's),
    # and the sentence says that is the difference, not that the weights are other ones.
    for cast, kind in ((torch.float64, "float64"), (torch.bfloat16, "bfloat16")):
        refusal = f"its weights are {kind}, the run's float32: cast it back, model.float"
        with pytest.raises(VqkitError, match=refusal):
            SamplingContext(VQVAE.from_run(run_copy).to(cast), run_copy)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"digit": "3"}, "class to sample (--digit) must be a whole number of at least 0, not '3'"),
        ({"temperature": "1"}, "The temperature (--temperature) must be a number, not '1'"),
        ({"top_k": 1.5}, "The top-k cut (--top-k) must be a whole number of at least 1, not 1.5"),
    ],
)
def test_prior_options_of_the_wrong_type_are_one_sentence(options, fragment, run_copy):
    make_full_run(run_copy)  # a real, tiny, conditional prior
    context = SamplingContext(VQVAE.from_run(run_copy), run_copy)
    with pytest.raises(InvalidValue) as refused:
        sample_codes("prior", 2, context, **options)
    assert fragment in str(refused.value)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: load_split(["mnist"], "train"), "The dataset is named by a string, not ['mnist']"),
        (lambda: load_split("mnist", ["train"]), "The split is named by a string"),
        (lambda: load_split("mnist", "train", 5), "The data folder (--data-dir) is a path"),
        (lambda: preset_config(["best"]), "Unknown preset ['best']; choose one of"),
        (lambda: sample_codes(["used"], 2, None), "Unknown sampling strategy ['used']"),
    ],
    ids=["dataset", "split", "data_dir", "preset", "strategy"],
)
def test_names_that_are_not_strings_are_one_sentence(call, fragment):
    with pytest.raises(InvalidValue) as refused:  # not a TypeError from a dict lookup
        call()
    assert fragment in str(refused.value)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: RunConfig(model=5), "A RunConfig's model must be a ModelConfig, not 5"),
        (lambda: RunConfig(version="1"), "A RunConfig's version must be a whole number"),
        (lambda: DemoSettings(epochs=0), "'epochs' must be at least 1, not 0"),
        (lambda: DemoSettings(precision="fp64"), "'precision' must be one of fp32, bf16, auto"),
        (lambda: DemoSettings(dataset="idx"), "'dataset' must be one of mnist, fashion-mnist"),
        (lambda: DemoSettings(preset="huge"), "'preset' must be one of default"),
        (lambda: DemoSettings(interpolation_pair=(3, 80)), "names a class that mnist does not"),
        # Accepted, these failed to allocate at the samples stage, after minutes of training.
        (
            lambda: DemoSettings(samples_per_figure=2**62),
            "'samples_per_figure' must be at most 4,096, not 4,611,686,018,427,387,904",
        ),
        (lambda: DemoSettings(score_samples=10**9), "'score_samples' must be at most 1,000,000"),
        (lambda: DemoSettings(interpolation_steps=10**9), "'interpolation_steps' must be at most"),
        # Class d's row of the conditional figure is drawn with seed + d: that failed after
        # both models had trained.
        (
            lambda: DemoSettings(seed=2**63 - 9),
            "--seed must be at most 9223372036854775798 with a conditional prior",
        ),
    ],
    ids=[
        "run-model",
        "run-version",
        "epochs",
        "precision",
        "dataset",
        "preset",
        "pair",
        "figure-samples",
        "score-samples",
        "interpolation-steps",
        "conditional-seed",
    ],  # fmt: skip
)
def test_settings_are_checked_when_built_not_minutes_later(build, fragment):
    with pytest.raises(InvalidValue) as refused:
        build()
    assert fragment in str(refused.value)


def test_switches_take_only_booleans_and_log_a_function(run_copy, tmp_path):
    """'no' is truthy: taken as given it would show a bar, resume or weight the draw."""
    config = preset_config("efficient")
    with pytest.raises(InvalidValue, match="progress must be True, False or None, not 'no'"):
        train(config, tmp_path / "new", progress="no")
    with pytest.raises(InvalidValue, match="resume must be True or False, not 'yes'"):
        train(config, run_copy, resume="yes")
    with pytest.raises(InvalidValue, match="restart must be True or False, not 1"):
        train_prior(run_copy, restart=1)
    context = SamplingContext(VQVAE.from_run(run_copy), run_copy)
    with pytest.raises(InvalidValue, match="weighted must be True or False, not 'no'"):
        sample_codes("used", 2, context, weighted="no")
    with pytest.raises(InvalidValue, match="log must be a function taking one line of text"):
        score_run(run_copy, 4, log="x")
    assert not (tmp_path / "new").exists()


def test_a_refused_argument_is_a_value_error_and_a_missing_run_is_not(tmp_path):
    # Python's own checks raise ValueError for a value they do not take (Sonnet's VQ-VAE does
    # too), so `except ValueError` around a call is how many callers guard it.
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        PriorConfig(epochs=0)
    with pytest.raises(VqkitError) as missing:
        VQVAE.from_run(tmp_path / "no-such-run")
    assert not isinstance(missing.value, ValueError)  # a folder to fix, not an argument
