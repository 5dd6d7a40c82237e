"""The resumable state round-trips every piece of live training state exactly, without pickle."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save as save_safetensors

from vqkit import runfiles, train_state
from vqkit.checkpoint import read_tensors_and_metadata
from vqkit.config import ModelConfig, QuantizerConfig, preset_config
from vqkit.errors import VqkitError
from vqkit.model import VQVAE
from vqkit.train_state import Position
from vqkit.training import train

CONFIG = ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(num_embeddings=8, embedding_dim=4))


def training_objects(seed: int, fused: bool = False, channels_last: bool = False):
    torch.manual_seed(seed)
    model = VQVAE(CONFIG)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler, torch.Generator().manual_seed(seed)


def step(model, optimizer, scheduler, images) -> None:
    out = model(images)
    loss = (out.reconstruction - images.float().unsqueeze(1) / 255).pow(2).mean() + out.vq_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


# Fused Adam pairs parameter and moment elements by their place in memory: after a restore the
# moments of channels-last weights must be channels-last again, or steps go wrong.
@pytest.mark.parametrize(
    ("fused", "channels_last"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_round_trip_then_identical_next_step(tmp_path, fused, channels_last):
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    model, optimizer, scheduler, order = training_objects(0, fused, channels_last)
    for _ in range(3):
        step(model, optimizer, scheduler, images)
    torch.randperm(10, generator=order)
    position = Position(epochs_done=1, step=5, stepped=4, global_step=17, skipped_nonfinite=1)
    loss_sum = torch.tensor(1.25)
    train_state.save(tmp_path, position, model, optimizer, order.get_state(), loss_sum, scheduler)
    torch_rng = torch.get_rng_state()

    torch.manual_seed(99)  # scramble the global RNG; load must put it back
    fresh, fresh_optimizer, fresh_scheduler, fresh_order = training_objects(1, fused, channels_last)
    loaded, loaded_sum = train_state.load(
        tmp_path, fresh, fresh_optimizer, fresh_order, fresh_scheduler
    )
    assert loaded == position and float(loaded_sum) == 1.25
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert torch.equal(fresh_order.get_state(), order.get_state())
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert fresh_optimizer.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # The next step from the loaded state equals the next step of the original.
    step(model, optimizer, scheduler, images)
    step(fresh, fresh_optimizer, fresh_scheduler, images)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    # The readable counters agree with the authoritative copy inside the safetensors file.
    counters = json.loads((tmp_path / runfiles.TRAIN_STATE_META).read_text())
    assert counters["global_step"] == 17 and counters["step"] == 5


def test_state_for_another_model_size_is_refused(tmp_path):
    model, optimizer, _, order = training_objects(0)
    train_state.save(tmp_path, Position(), model, optimizer, order.get_state(), torch.zeros(()))
    bigger = VQVAE(ModelConfig(hidden_dim=16, quantizer=CONFIG.quantizer))
    bigger_optimizer = torch.optim.Adam(bigger.parameters())
    with pytest.raises(VqkitError, match="does not fit"):
        train_state.load(tmp_path, bigger, bigger_optimizer, torch.Generator())


def test_negative_counters_are_refused_as_damage(tmp_path):
    model, optimizer, _, order = training_objects(0)
    position = Position(epochs_done=2, step=-1)  # no run can have taken -1 batches
    train_state.save(tmp_path, position, model, optimizer, order.get_state(), torch.zeros(()))
    with pytest.raises(VqkitError, match="damaged"):
        train_state.load(tmp_path, model, optimizer, torch.Generator())


def saved_after_a_step(tmp_path):
    """A state saved in ``tmp_path`` after one training step: the model it saved, the file,
    and the file's tensors and metadata (for a test to damage or age them)."""
    model, optimizer, scheduler, order = training_objects(0)
    step(model, optimizer, scheduler, torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    train_state.save(tmp_path, Position(), model, optimizer, order.get_state(), torch.zeros(()))
    path = tmp_path / runfiles.TRAIN_STATE
    tensors, metadata = read_tensors_and_metadata(path, "state")
    return model, path, tensors, metadata


def test_an_adam_moment_of_the_wrong_shape_is_refused_as_damage(tmp_path):
    # A one-element moment would broadcast silently over its parameter when copied in; the
    # shape check must call the file damaged instead.
    model, path, tensors, metadata = saved_after_a_step(tmp_path)
    name = "optimizer/0/exp_avg"
    assert tensors[name].numel() > 1
    tensors[name] = tensors[name].flatten()[:1].clone()
    path.write_bytes(save_safetensors(tensors, metadata))
    fresh, fresh_optimizer, _, fresh_order = training_objects(1)
    with pytest.raises(VqkitError, match="damaged"):
        train_state.load(tmp_path, fresh, fresh_optimizer, fresh_order)


@pytest.mark.parametrize(
    "damage",
    [
        lambda info: info.update(optimizer_state=[]),
        lambda info: info.update(param_groups="x"),
        lambda info: info["param_groups"][0].update(lr="abc"),
        lambda info: info["param_groups"][0].update(lr=None),
        lambda info: info["param_groups"][0].update(betas=[5]),
        lambda info: info["param_groups"][0].update(amsgrad=1),
        lambda info: info["param_groups"][0].pop("eps"),
    ],
    ids=["state-list", "groups-text", "lr-text", "lr-null", "one-beta", "flag-number", "no-eps"],
)
def test_optimizer_settings_of_the_wrong_kind_are_refused_as_damage(tmp_path, damage):
    # Such a state loads into Adam without complaint and fails at its first step instead.
    model, path, tensors, metadata = saved_after_a_step(tmp_path)
    info = json.loads(metadata[train_state.METADATA_KEY])
    # A flag newer than the state (here: one the saving optimizer lacked) is no damage.
    info["param_groups"][0].pop("differentiable")
    path.write_bytes(save_safetensors(tensors, {train_state.METADATA_KEY: json.dumps(info)}))
    fresh, fresh_optimizer, _, _ = training_objects(1)
    train_state.load(tmp_path, fresh, fresh_optimizer, torch.Generator())
    damage(info)
    path.write_bytes(save_safetensors(tensors, {train_state.METADATA_KEY: json.dumps(info)}))
    fresh, fresh_optimizer, _, _ = training_objects(1)
    with pytest.raises(VqkitError, match="damaged"):
        train_state.load(tmp_path, fresh, fresh_optimizer, torch.Generator())


def test_a_state_saved_before_the_fused_kernel_resumes_with_it(tmp_path):
    # vqkit before the fused Adam kernel saved "fused": null (and version 1, without the
    # quantizer's loss term); training now steps with fused=True, which such a state must
    # resume as it is, not be called damaged.
    model, path, tensors, metadata = saved_after_a_step(tmp_path)
    info = json.loads(metadata[train_state.METADATA_KEY])
    info.update(version=1)
    info["param_groups"][0].update(fused=None, foreach=None)
    path.write_bytes(save_safetensors(tensors, {train_state.METADATA_KEY: json.dumps(info)}))
    fresh, fresh_optimizer, _, fresh_order = training_objects(1, fused=True)
    train_state.load(tmp_path, fresh, fresh_optimizer, fresh_order)
    assert fresh_optimizer.param_groups[0]["fused"] is True
    assert fresh_optimizer.param_groups[0]["foreach"] is None
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_state_from_a_future_version_is_refused(tmp_path):
    model, optimizer, _, order = training_objects(0)
    train_state.save(tmp_path, Position(), model, optimizer, order.get_state(), torch.zeros(()))
    path = tmp_path / runfiles.TRAIN_STATE
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"version\\": 2', b'\\"version\\": 7', 1))
    with pytest.raises(VqkitError, match=r"incompatible .*\(state version 7, this vqkit reads "
                       r"versions 1, 2\)\.$"):  # fmt: skip
        train_state.load(tmp_path, model, optimizer, torch.Generator())


def test_a_resumed_channels_last_run_ends_as_an_unbroken_one(tmp_path):
    # The model must be channels-last before its optimizer state is restored, so the moments
    # take the layout the fused Adam steps with.
    config = preset_config("efficient")
    config.train = dataclasses.replace(
        config.train,
        epochs=2,
        train_limit=256,
        test_limit=100,
        batch_size=64,
        deterministic=True,
        channels_last=True,
    )
    unbroken = train(config, tmp_path / "unbroken", device="cpu", progress=False)
    first = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    train(first, tmp_path / "resumed", device="cpu", progress=False)
    resumed = train(config, tmp_path / "resumed", device="cpu", progress=False, resume=True)
    resumed_weights = resumed.model.state_dict()
    for name, weight in unbroken.model.state_dict().items():
        assert torch.equal(weight, resumed_weights[name]), name


def test_a_moment_for_a_parameter_the_model_lacks_is_refused_as_damage(tmp_path):
    # Parameters are numbered 0..P-1; a moment numbered P names none of them and must be called
    # damage, not escape as an IndexError.
    config = ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(num_embeddings=8, embedding_dim=4))
    torch.manual_seed(0)
    model = VQVAE(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    train_state.save(tmp_path, Position(), model, optimizer, order.get_state(), torch.zeros(()))
    path = tmp_path / runfiles.TRAIN_STATE
    tensors, metadata = read_tensors_and_metadata(path, "state")
    count = len(list(model.parameters()))
    tensors[f"optimizer/{count}/exp_avg"] = torch.zeros(3)
    path.write_bytes(save_safetensors(tensors, metadata))
    with pytest.raises(VqkitError, match="damaged"):
        train_state.load(tmp_path, model, torch.optim.Adam(model.parameters()), torch.Generator())


def test_a_state_saved_with_the_loss_sum_alone_resumes_without_inventing_its_terms(tmp_path):
    # States saved before the quantizer term was kept hold one sum. At an epoch's start its
    # terms are known (nothing summed yet); mid-epoch the resumed epoch logs the loss alone.
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.batch_size = 1, 128, 32
    config.train.test_limit, config.train.checkpoint_every = 32, 2
    run = tmp_path / "run"
    train(config, run, device="cpu", progress=False)
    path = run / runfiles.TRAIN_STATE
    tensors, metadata = read_tensors_and_metadata(path, "state")
    assert tensors["epoch/loss_sum"].shape == (2,)  # the loss, its quantizer term
    for step, logged in ((0, True), (2, False)):
        old = dict(tensors, **{"epoch/loss_sum": tensors["epoch/loss_sum"][:1].clone()})
        info = json.loads(metadata["vqkit_train_state"])
        info.update(epochs_done=0, step=step, global_step=step, version=1)
        path.write_bytes(save_safetensors(old, {"vqkit_train_state": json.dumps(info)}))
        counters = json.loads((run / runfiles.TRAIN_STATE_META).read_text())
        counters.update(epochs_done=0, step=step, global_step=step, version=1)
        (run / runfiles.TRAIN_STATE_META).write_text(json.dumps(counters))
        (run / runfiles.METRICS).write_text("")
        config.train.epochs = 1
        record = train(config, run, device="cpu", progress=False, resume=True).history[-1]
        assert ("train_quantizer_loss" in record) is logged
        assert ("train_reconstruction_mse" in record) is logged
        assert 0 < record["train_loss"] < 1
