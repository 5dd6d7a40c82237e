"""--cuda-graph where no GPU is needed: its flag, its refusals, what it must keep in step with.

The replayed steps themselves are checked on a GPU (tests/test_cuda.py, the whole-step tests).
"""

from __future__ import annotations

import pytest
import torch

from vqkit.acceleration import make_scheduler
from vqkit.cli import main
from vqkit.config import RunConfig, TrainConfig, preset_config
from vqkit.cuda_graph import optimizer_in_graph, require_cuda_graph_support
from vqkit.distributed import Context
from vqkit.errors import VqkitError
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
