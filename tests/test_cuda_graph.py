"""--cuda-graph where no GPU is needed: its flag, its refusals, what it must keep in step with,
and the bookkeeping around replays, run against a CPU stand-in for the recorded graph.

The replayed steps themselves are checked on a GPU (tests/test_cuda.py, the whole-step tests).
"""

from __future__ import annotations

import pytest
import torch
from graph_helpers import train_eager_and_graphed

from vqkit import training
from vqkit.acceleration import make_scheduler
from vqkit.cli import main
from vqkit.config import RunConfig, TrainConfig, preset_config
from vqkit.cuda_graph import GraphedTrainStep, optimizer_in_graph, require_cuda_graph_support
from vqkit.distributed import Context
from vqkit.errors import VqkitError
from vqkit.step import compute_losses
from vqkit.train_state import exists

CUDA = torch.device("cuda")  # a name only: nothing runs on it here


def test_the_flag_is_recorded_and_refused_beside_compile():
    config = preset_config("efficient")
    config.train.cuda_graph = True
    assert RunConfig.from_dict(config.to_dict()).train.cuda_graph is True
    with pytest.raises(VqkitError, match="cannot go with --compile"):
        TrainConfig(cuda_graph=True, compile=True)


def test_a_cpu_run_is_refused_in_one_sentence_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--preset", "efficient", "--cuda-graph", "--device", "cpu",
                 "--train-limit", "64", "--out", str(run), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not run.exists()
    assert "--cuda-graph replays the training step on a CUDA GPU" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_resume_accepts_the_flag_and_a_refusal_leaves_the_run_as_it_was(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--train-limit", "128", "--test-limit", "64", "--quiet", "--device", "cpu"]
    assert main(["train", "--preset", "efficient", "--epochs", "1", "--out", str(run), *small]) == 0
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--epochs", "2", "--cuda-graph", *small])
    # Not refused as a change of what the run learns: refused because there is no GPU.
    assert code == 2 and "on a CUDA GPU" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    assert exists(run)


def test_one_process_and_no_skipped_steps():
    settings = TrainConfig(cuda_graph=True)
    require_cuda_graph_support(settings, CUDA, Context())  # accepted
    with pytest.raises(VqkitError, match="one process"):
        require_cuda_graph_support(settings, CUDA, Context(rank=0, world_size=2))
    settings.skip_nonfinite = 3
    with pytest.raises(VqkitError, match="cannot skip bad steps"):
        require_cuda_graph_support(settings, CUDA, Context())


@pytest.mark.parametrize(
    ("schedule", "moving"),
    [("constant", set()), ("cosine", {"lr"}), ("onecycle", {"lr", "betas"})],
)
def test_the_update_is_recorded_only_when_the_schedule_moves_nothing_but_the_rate(schedule, moving):
    """The settings a schedule changes between steps, found by stepping it. A recorded Adam
    update reads the rate from the device but has every other setting fixed in the recording,
    so it may be recorded only when the rate is all that moves."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    scheduler = make_scheduler(optimizer, TrainConfig(lr_schedule=schedule), total_steps=20)
    group = optimizer.param_groups[0]
    start = {key: value for key, value in group.items() if key != "params"}
    changed = set()
    for _ in range(10):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        changed |= {key for key, value in group.items() if key != "params" and value != start[key]}
    assert changed == moving
    assert optimizer_in_graph(scheduler) == (changed <= {"lr"})


class RecordedStepOnCpu:
    """What a CUDA graph of the step does at each replay, as eager CPU code: the step on the
    static batch, written into the recorded gradient and output tensors; then, if the update
    was recorded, Adam with every setting as it was at recording except the rate, which it
    reads from the tensor the group held while recording (a real graph fixes the numbers it was
    given and reads tensors at replay). Lets the bookkeeping around replays run on a CPU."""

    def __init__(self, step):
        self.step = step
        groups = step.optimizer.param_groups
        self.settings = [{key: group[key] for key in group if key != "params"} for group in groups]

    def replay(self) -> None:
        step = self.step
        groups = step.optimizer.param_groups
        params = [p for group in groups for p in group["params"]]
        reconstruction, quantizer = compute_losses(step.model, step.static_batch)
        loss = reconstruction + quantizer
        for held, fresh in zip(step.graph_grads, torch.autograd.grad(loss, params), strict=True):
            held.copy_(fresh)
        for held, fresh in zip(step.outputs, (reconstruction, quantizer, loss), strict=True):
            held.copy_(fresh.detach())
        if not step.adam_in_graph:
            return
        live = [{key: group[key] for key in group if key != "params"} for group in groups]
        live_grads = [p.grad for p in params]
        for group, recorded in zip(groups, self.settings, strict=True):
            group.update(recorded, lr=float(recorded["lr"]), capturable=False)
        for param, held in zip(params, step.graph_grads, strict=True):
            param.grad = held
        step.optimizer.step()
        for group, settings in zip(groups, live, strict=True):
            group.update(settings)
        for param, grad in zip(params, live_grads, strict=True):
            param.grad = grad


def record_on_cpu(step):
    """Stands in for ``GraphedTrainStep._record``: recording runs nothing, but leaves gradient
    and output tensors for the replays to write."""
    for group in step.optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    return RecordedStepOnCpu(step), tuple(torch.zeros(()) for _ in range(3))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_replays_keep_the_eager_schedule_and_gradients(schedule, monkeypatch):
    """Eager training against replays of a CPU stand-in for the graph: the rate copied in
    before each replay, the schedule stepped after it, Adam out of the graph when a one-cycle
    schedule moves beta1, and the graph's gradients handed back after each epoch's short
    eager batch. Any of these wrong changes the weights."""
    monkeypatch.setattr(GraphedTrainStep, "_on_side_stream", GraphedTrainStep._eager)
    monkeypatch.setattr(GraphedTrainStep, "_record", record_on_cpu)
    config = preset_config("efficient")
    config.model.hidden_dim = 8
    settings = TrainConfig(lr=3e-3, lr_schedule=schedule, batch_size=32)
    images = torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8)  # 6 batches of 32, then 8
    runs = train_eager_and_graphed(config.model, settings, images, epochs=3)
    (losses, weights, _), (graphed_losses, graphed_weights, step) = runs[False], runs[True]
    assert step.captured and step.adam_in_graph == (schedule != "onecycle")
    assert graphed_losses == pytest.approx(losses, rel=1e-6)
    for name, tensor in weights.items():
        torch.testing.assert_close(graphed_weights[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize(("schedule", "resumed"), [("constant", True), ("onecycle", False)])
def test_a_run_with_replays_ends_where_an_eager_run_ends(schedule, resumed, tmp_path, monkeypatch):
    """``vqkit.train``'s own loop (guard, loss sums, saved states) with the CPU stand-in for the
    graph, against one uninterrupted eager run; with a constant rate the replayed run stops
    after epoch 1 and is resumed (a one-cycle run cannot be lengthened). The `best` codebook:
    k-means in the first warm-up step, EMA and restarts inside every replay."""
    monkeypatch.setattr(training, "require_cuda_graph_support", lambda *args: None)
    monkeypatch.setattr(GraphedTrainStep, "_on_side_stream", GraphedTrainStep._eager)
    monkeypatch.setattr(GraphedTrainStep, "_record", record_on_cpu)
    replays = []
    replay = RecordedStepOnCpu.replay
    monkeypatch.setattr(RecordedStepOnCpu, "replay", lambda self: replays.append(replay(self)))
    config = preset_config("best")
    config.model.hidden_dim = 8
    config.train = TrainConfig(epochs=2, batch_size=64, train_limit=600, test_limit=200,
                               lr=3e-3, lr_schedule=schedule, deterministic=True)  # fmt: skip
    eager = training.train(config, tmp_path / "eager", device="cpu", progress=False)
    config.train.cuda_graph = True
    if resumed:
        config.train.epochs = 1
        training.train(config, tmp_path / "graphed", device="cpu", progress=False)
        config.train.epochs = 2
    graphed = training.train(
        config, tmp_path / "graphed", device="cpu", progress=False, resume=resumed
    )
    # 9 full batches of 64 an epoch (and one of 24): 3 warm-up steps, then replays, again
    # after the resume.
    assert len(replays) == (6 + 6 if resumed else 18 - 3)
    for key in ("train_loss", "test_mse"):
        assert [r[key] for r in graphed.history] == pytest.approx(
            [r[key] for r in eager.history], rel=1e-6
        )
    assert graphed.history[-1]["codebook_restarts"] == eager.history[-1]["codebook_restarts"]
    for name, tensor in eager.model.state_dict().items():
        torch.testing.assert_close(graphed.model.state_dict()[name], tensor, msg=name)
