"""Training on and using the user's own IDX dataset (``--dataset idx --data-dir DIR``)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from vqkit import runfiles, score
from vqkit.classifier import ClassifierConfig, cache_name
from vqkit.cli import main
from vqkit.config import preset_config
from vqkit.data import (
    INFO,
    OWN_DATASET,
    dataset_classes,
    idx_bytes,
    load_split,
    read_idx,
    write_own_dataset,
)
from vqkit.environment import read_records
from vqkit.errors import VqkitError
from vqkit.model import VQVAE
from vqkit.score import score_run
from vqkit.training import train
from vqkit.usage import code_usage, count_codes
from vqkit.wording import some_of

STEMS = {"train": "train", "test": "t10k"}


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzip-compressed uint8 IDX file, written from the format's definition."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as out:
        out.write(header + array.astype(np.uint8).tobytes())


def write_dataset(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        write_idx(folder / f"{STEMS[split]}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{STEMS[split]}-labels-idx1-ubyte.gz", labels)
    return folder


def twenty_class_dataset(folder: Path) -> Path:
    """MNIST slices with every odd-numbered image's label moved up by 10: labels 0 to 19."""
    splits = {}
    for split, count in (("train", 600), ("test", 200)):
        data = load_split("mnist", split)
        labels = data.labels[:count].numpy() + 10 * (np.arange(count) % 2)
        splits[split] = (data.images[:count].numpy(), labels)
    return write_dataset(folder, splits)


@pytest.fixture(scope="module")
def mnist_copy(tmp_path_factory) -> Path:
    """The package's own MNIST files, copied into a folder of the user's."""
    folder = tmp_path_factory.mktemp("own-mnist")
    embedded = resources.files("vqkit.data").joinpath("mnist")
    for entry in embedded.iterdir():
        if entry.name.endswith(".gz"):
            with resources.as_file(entry) as source:
                shutil.copy(source, folder / entry.name)
    return folder


def test_an_own_copy_of_mnist_loads_exactly_as_mnist(mnist_copy):
    for split in ("train", "test"):
        own, named = load_split(OWN_DATASET, split, mnist_copy), load_split("mnist", split)
        assert torch.equal(own.images, named.images)
        assert torch.equal(own.labels, named.labels)
        assert own.classes == tuple(str(digit) for digit in range(10))


def test_training_on_an_own_copy_of_mnist_gives_the_same_model(mnist_copy, tmp_path):
    config = preset_config("efficient")
    config.train = dataclasses.replace(
        config.train, epochs=1, train_limit=256, test_limit=100, batch_size=64, deterministic=True
    )
    named = train(config, tmp_path / "named", device="cpu", progress=False)
    own_config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, dataset=OWN_DATASET)
    )
    own = train(own_config, tmp_path / "own", device="cpu", data_dir=mnist_copy, progress=False)
    for name, tensor in named.model.state_dict().items():
        assert torch.equal(tensor, own.model.state_dict()[name]), name
    assert own.final["test_mse"] == named.final["test_mse"]
    recorded = json.loads((tmp_path / "own" / "config.json").read_text())["train"]
    assert recorded["data_dir"] == str(mnist_copy.resolve())
    assert json.loads((tmp_path / "named" / "config.json").read_text())["train"]["data_dir"] is None


def test_the_classes_cover_the_labels_of_both_splits(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    folder = write_dataset(
        tmp_path,
        {"train": (images, np.array([0, 1, 3, 2])), "test": (images, np.array([5, 0, 0, 1]))},
    )
    assert dataset_classes(OWN_DATASET, folder) == ("0", "1", "2", "3", "4", "5")
    assert load_split(OWN_DATASET, "train", folder).classes == dataset_classes(OWN_DATASET, folder)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((3, 32, 32)), "expected (N, 28, 28) images"),
        (np.zeros((0, 28, 28)), "holds no images"),
    ],
)
def test_own_files_of_the_wrong_shape_are_refused(tmp_path, images, message):
    labels = np.zeros(images.shape[0])
    folder = write_dataset(tmp_path, {"train": (images, labels), "test": (images, labels)})
    with pytest.raises(VqkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_split(OWN_DATASET, "train", folder)


def test_an_own_dataset_needs_its_folder(tmp_path):
    with pytest.raises(VqkitError, match="give it with --data-dir"):
        load_split(OWN_DATASET, "train")
    with pytest.raises(
        VqkitError, match="has no train files .*write_own_dataset makes them from image"
    ):
        load_split(OWN_DATASET, "train", tmp_path)
    # A folder that was moved away, or a file given as the folder, is named as such.
    for dataset in (OWN_DATASET, "mnist"):
        with pytest.raises(VqkitError, match="moved' does not exist; give the folder that holds"):
            load_split(dataset, "test", tmp_path / "moved")
    (tmp_path / "file").write_text("")
    with pytest.raises(VqkitError, match="file' is a file, not a folder; give the folder"):
        load_split(OWN_DATASET, "test", tmp_path / "file")


def test_each_own_dataset_gets_its_own_cached_classifier(tmp_path):
    first = twenty_class_dataset(tmp_path / "a")
    same = shutil.copytree(first, tmp_path / "b")
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    other = write_dataset(
        tmp_path / "c", {"train": (images, np.array([0, 1])), "test": (images, np.array([0, 1]))}
    )
    config = ClassifierConfig(dataset=OWN_DATASET)
    names = [cache_name(config, folder) for folder in (first, same, other)]
    assert names[0] == names[1] != names[2] and names[0].startswith("idx-")
    assert cache_name(ClassifierConfig(dataset="mnist")) == "mnist"
    # The same images under other labels teach another classifier: another name too.
    relabelled = write_dataset(
        tmp_path / "d", {"train": (images, np.array([1, 0])), "test": (images, np.array([0, 1]))}
    )
    assert cache_name(config, relabelled) != names[2]


def test_the_cli_pipeline_on_a_twenty_class_dataset(tmp_path, capsys):
    data = twenty_class_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--quiet", "--device", "cpu"]
    assert main(["train", "--dataset", "idx", "--out", str(tmp_path / "x"), *common]) == 2
    assert "--data-dir" in capsys.readouterr().err
    train_args = ["--dataset", "idx", "--data-dir", str(data), "--preset", "efficient"]
    assert main(["train", *train_args, "--epochs", "1", "--out", str(run), *common]) == 0
    capsys.readouterr()
    trained_mse = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_mse"]

    # Later commands find the data through the folder recorded in the run.
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_mse"] == pytest.approx(trained_mse)
    assert main(["train-prior", str(run), "--conditional", "--epochs", "1", *common]) == 0
    prior = json.loads((run / "prior_config.json").read_text())
    assert prior["num_classes"] == 20
    out = tmp_path / "nineteen.png"
    assert (
        main(["sample", str(run), "--strategy", "prior", "--digit", "19", "--out", str(out)]) == 0
    )
    assert out.is_file()

    moved = data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    assert str(data) in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data-dir", str(moved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_mse"] == pytest.approx(trained_mse)


def test_train_prior_encodes_again_when_the_data_folder_was_rewritten(tmp_path, capsys):
    # The cached code grids were keyed by the weights alone: relabelled data then trained a
    # conditional prior on the old labels, or (fewer classes) ended in an IndexError traceback.
    data = twenty_class_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--quiet", "--device", "cpu"]
    train_args = ["--dataset", "idx", "--data-dir", str(data), "--preset", "efficient"]
    assert main(["train", *train_args, "--epochs", "1", "--out", str(run), *common]) == 0
    prior = ["train-prior", str(run), "--conditional", "--epochs", "1", "--channels", "8", *common]
    assert main(prior) == 0
    assert json.loads((run / "prior_config.json").read_text())["num_classes"] == 20
    counted = code_usage(run)  # cached in the run folder
    mnist = {split: load_split("mnist", split) for split in ("train", "test")}
    five = {  # other images, and labels of 5 classes
        split: (
            mnist[split].images[600 : 600 + count].numpy(),
            mnist[split].labels[600 : 600 + count].numpy() % 5,
        )
        for split, count in (("train", 600), ("test", 200))
    }
    write_dataset(data, five)
    # The code usage of the new images, not the counts cached for the old ones.
    recounted = code_usage(run)
    with torch.no_grad():
        expected = count_codes(VQVAE.from_run(run), torch.from_numpy(five["train"][0]), 100)
    assert torch.equal(recounted, expected) and not torch.equal(recounted, counted)
    capsys.readouterr()
    assert main(["train-prior", str(run), "--resume", "--epochs", "2", *common]) == 2
    assert "data folder of '" in capsys.readouterr().err  # the saved state fits the old grids
    assert main([*prior, "--restart"]) == 0, capsys.readouterr().err
    assert json.loads((run / "prior_config.json").read_text())["num_classes"] == 5
    np.testing.assert_array_equal(np.load(run / "labels_train.npy"), five["train"][1])


def test_a_run_of_ones_own_images_resumes_only_on_the_same_images(tmp_path, capsys):
    # The named datasets are checked against their checksums; one's own are recorded by digest,
    # and a resume on other images (the folder rewritten since) is refused before training.
    mnist = load_split("mnist", "train")
    images, labels = mnist.images[:256], mnist.labels[:256]
    data = write_own_dataset(tmp_path / "data", train=(images, labels), test=(images, labels))
    run = tmp_path / "run"
    flags = ["--dataset", "idx", "--data-dir", str(data), "--preset", "efficient", "--quiet"]
    assert main(["train", *flags, "--epochs", "1", "--batch-size", "64", "--out", str(run)]) == 0
    (record,) = read_records(run)
    both = images.numpy().tobytes() + images.numpy().tobytes()  # train, then test, images
    assert record["data_sha256"] == hashlib.sha256(both).hexdigest()
    shifted = (images.roll(1, dims=0), labels)
    write_own_dataset(data, train=shifted, test=(images, labels), overwrite=True)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"The images in '{data}' differ from those the run in '{run}' trained on" in err
    # Refused before anything was saved: config.json still says 1 epoch, and so on.
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    write_own_dataset(data, train=(images, labels), test=(images, labels), overwrite=True)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0


def test_idx_bytes_of_the_mnist_arrays_match_the_published_checksums():
    for split in ("train", "test"):
        data = load_split("mnist", split)
        images_file, labels_file = INFO["mnist"].files[split]
        encoded_images = idx_bytes(data.images.numpy())
        encoded_labels = idx_bytes(data.labels.numpy().astype(np.uint8))
        assert hashlib.sha256(encoded_images).hexdigest() == images_file.sha256
        assert hashlib.sha256(encoded_labels).hexdigest() == labels_file.sha256


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64, np.int8])
def test_idx_bytes_read_back_for_every_idx_type(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(array))
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_cannot_hold_int64():
    with pytest.raises(VqkitError, match="cannot hold int64"):
        idx_bytes(np.zeros(3, dtype=np.int64))


def test_a_written_own_dataset_reads_back(tmp_path):
    mnist = load_split("mnist", "test")
    images, labels = mnist.images[:50], mnist.labels[:50]  # uint8 and int64 tensors
    as_floats = images.numpy() / 255.0
    folder = write_own_dataset(
        tmp_path / "own", train=(as_floats, labels), test=(images[:20], labels[:20].numpy())
    )
    train_split = load_split(OWN_DATASET, "train", folder)
    assert torch.equal(train_split.images, images) and torch.equal(train_split.labels, labels)
    test_split = load_split(OWN_DATASET, "test", folder)
    assert torch.equal(test_split.images, images[:20])
    # With a channel axis, as the model takes images too: the same files, byte for byte.
    with_channel = write_own_dataset(
        tmp_path / "channel",
        train=(as_floats[:, None], labels),
        test=(images[:20, None], labels[:20]),
    )
    for path in folder.iterdir():
        assert (with_channel / path.name).read_bytes() == path.read_bytes(), path.name
    # Tensors straight from training code: half-precision pixels (exact at multiples of 1/255
    # only to within half a level, which the rounding absorbs), ones that require grad.
    as_bf16 = torch.from_numpy(as_floats).to(torch.bfloat16).requires_grad_()
    from_tensors = write_own_dataset(
        tmp_path / "tensors", train=(as_bf16, labels), test=(images[:20].float() / 255, labels[:20])
    )
    reread = load_split(OWN_DATASET, "train", from_tensors).images
    assert (reread.int() - images.int()).abs().max() <= 1  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 27, 28), np.uint8), np.zeros(2, np.uint8), "must be \\(N, 28, 28\\) or"),
        (np.zeros((2, 3, 28, 28), np.uint8), np.zeros(2, np.uint8), "shape \\(2, 3, 28, 28\\);"),
        (np.full((2, 28, 28), 1.5), np.zeros(2, np.uint8), "floats outside \\[0, 1\\]"),
        (np.full((2, 28, 28), 300), np.zeros(2, np.uint8), "values from 300 to 300"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 256]), "from 0 to 256"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0.0, 1.0]), "labels are float64"),
        (np.ones((2, 28, 28), bool), np.zeros(2, np.uint8), "images are bool; they must be"),
        (
            np.eye(28, dtype=np.int64)[None].repeat(2, 0),
            np.zeros(2, np.uint8),
            "0 and 1 only, read",
        ),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(3, np.uint8), "2 images but 3 labels"),
        (torch.zeros(2, 28, 28), torch.zeros(2, dtype=torch.bfloat16), "labels are float32"),
    ],
)
def test_bad_arrays_are_refused_before_anything_is_written(tmp_path, images, labels, message):
    good = (np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8))
    with pytest.raises(VqkitError, match=message):
        write_own_dataset(tmp_path / "own", train=good, test=(images, labels))
    assert not (tmp_path / "own").exists()


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (np.zeros((1, 28, 28), np.uint8), "must be a pair \\(images, labels\\), not ndarray"),
        ((1, 2, 3), "must be a pair \\(images, labels\\), not a tuple of 3 items"),
    ],
)
def test_a_split_that_is_not_a_pair_is_refused(tmp_path, split, message):
    good = (np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8))
    with pytest.raises(VqkitError, match=message):
        write_own_dataset(tmp_path / "own", train=good, test=split)


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("", "The dataset folder is empty; give the name of a folder."),
        (" ", "The dataset folder is empty; give the name of a folder."),
        (None, "The dataset folder is a path \\(a str or pathlib.Path\\), not None."),
        (5, "The dataset folder is a path \\(a str or pathlib.Path\\), not 5."),
    ],
)
def test_a_dataset_folder_that_names_none_is_refused(tmp_path, monkeypatch, folder, message):
    monkeypatch.chdir(tmp_path)  # "" was the current folder, written into without a word
    good = (np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8))
    with pytest.raises(VqkitError, match=message):
        write_own_dataset(folder, train=good, test=good)
    assert list(tmp_path.iterdir()) == []


def test_ragged_nested_lists_are_refused_in_a_sentence(tmp_path):
    ragged = [[0] * 28] * 27 + [[0] * 27]
    with pytest.raises(VqkitError, match="The test images are not a rectangular array"):
        write_own_dataset(tmp_path / "own", train=([[[0] * 28] * 28], [0]), test=([ragged], [0]))


def test_writing_over_a_dataset_needs_overwrite(tmp_path):
    images, labels = np.zeros((2, 28, 28), np.uint8), np.array([0, 1])
    folder = write_own_dataset(tmp_path / "own", train=(images, labels), test=(images, labels))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    brighter = (images + 9, labels)
    with pytest.raises(VqkitError, match="already holds dataset files"):
        write_own_dataset(folder, train=brighter, test=brighter)
    for truthy in ("no", 1):  # a string such as "no" would have meant yes
        with pytest.raises(VqkitError, match="overwrite must be True or False, not"):
            write_own_dataset(folder, train=brighter, test=brighter, overwrite=truthy)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before

    # An uncompressed copy is what the reader would take first: overwrite removes it.
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    write_own_dataset(folder, train=brighter, test=brighter, overwrite=True)
    assert not (folder / "train-images-idx3-ubyte").exists()
    assert int(load_split(OWN_DATASET, "train", folder).images.max()) == 9


def test_scoring_with_a_classifier_of_the_wrong_class_count_is_refused(small_run):
    with pytest.raises(VqkitError, match="The classifier has 5 classes, the dataset 10"):
        score_run(small_run.run_dir, 10, classifier_config=ClassifierConfig(num_classes=5))


def test_a_config_from_an_own_run_with_a_named_dataset_reads_the_named_one(tmp_path):
    data = twenty_class_dataset(tmp_path / "data")
    common = ["--epochs", "1", "--train-limit", "128", "--test-limit", "50", "--quiet"]
    own_run, mnist_run = tmp_path / "own", tmp_path / "mnist"
    assert main(["train", "--dataset", "idx", "--data-dir", str(data), *common,
                 "--out", str(own_run)]) == 0  # fmt: skip
    # The own run's folder must not come along: MNIST would be looked for in it.
    assert main(["train", "--config", str(own_run), "--dataset", "mnist", *common,
                 "--out", str(mnist_run)]) == 0  # fmt: skip
    train_settings = json.loads((mnist_run / "config.json").read_text())["train"]
    assert train_settings["dataset"] == "mnist" and train_settings["data_dir"] is None


def test_scoring_a_dataset_of_one_test_image_is_refused_before_the_classifier(
    tmp_path, monkeypatch, capsys
):
    mnist = load_split("mnist", "train")
    train, test = (mnist.images[:64], mnist.labels[:64]), (mnist.images[:1], mnist.labels[:1])
    data = write_own_dataset(tmp_path / "data", train=train, test=test)
    run = tmp_path / "run"
    flags = ["--dataset", "idx", "--data-dir", str(data), "--preset", "efficient", "--quiet"]
    assert main(["train", *flags, "--epochs", "1", "--batch-size", "32", "--out", str(run)]) == 0

    def too_late(*args, **kwargs):
        raise AssertionError("the classifier came first")

    monkeypatch.setattr(score, "load_or_train_classifier", too_late)
    capsys.readouterr()
    assert main(["score", str(run), "--n", "10", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "this dataset's test split holds 1 image; it needs at least 2." in err


def test_labels_with_gaps_refuse_a_conditional_prior_and_one_class_refuses_scores(
    tmp_path, monkeypatch, capsys
):
    # Every label 7: vqkit's classes are 0 to 7, and 0 to 6 have no image. A conditional prior
    # left those 7 classes at their random start and drew 7 of every 8 mixed samples from
    # them; score trained a one-class classifier and printed meaningless FIDs and accuracies.
    mnist = load_split("mnist", "train")
    sevens = np.full(64, 7, np.uint8)
    data = write_own_dataset(
        tmp_path / "data",
        train=(mnist.images[:64], sevens),
        test=(mnist.images[64:80], sevens[:16]),
    )
    run = tmp_path / "run"
    flags = ["--dataset", "idx", "--data-dir", str(data), "--preset", "efficient", "--quiet"]
    assert main(["train", *flags, "--epochs", "1", "--batch-size", "32", "--out", str(run)]) == 0
    capsys.readouterr()
    prior = ["train-prior", str(run), "--conditional", "--epochs", "1", "--channels", "8"]
    assert main([*prior, "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "the training split holds no image labelled 0, 1, 2, 3, 4, 5 and 6;" in err
    assert not (run / runfiles.PRIOR_CONFIG).exists()

    def too_late(*args, **kwargs):
        raise AssertionError("the classifier came first")

    monkeypatch.setattr(score, "load_or_train_classifier", too_late)
    assert main(["score", str(run), "--n", "10", "--device", "cpu"]) == 2
    assert "this dataset's training labels hold only one class." in capsys.readouterr().err


def test_a_long_list_of_labels_is_shortened():
    assert some_of([3]) == "3" and some_of([3, 5, 9]) == "3, 5 and 9"
    assert some_of(list(range(7))) == "0, 1, 2, 3, 4, 5 and 6"
    assert some_of(list(range(88))) == "0, 1, 2, 3, 4, 5 and 82 more"
