"""One writer per run folder: train and train-prior refuse a folder another process is writing,
before they read or write anything, on one rank or two; a killed holder leaves no lock."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import fails_cleanly
from process_helpers import child_env

from vqkit import run_lock, runfiles
from vqkit.checkpoint import load_model, why_no_weights_yet
from vqkit.cli import main
from vqkit.config import preset_config
from vqkit.errors import VqkitError
from vqkit.prior import incomplete_prior
from vqkit.run_lock import LOCK_NAME, RunLock, writer_of
from vqkit.runs import COLUMNS, run_row
from vqkit.training import train

# A separate process that takes a folder's lock as `train` does, says so, and waits to be killed.
HOLDER = (
    "import sys, time\n"
    "from vqkit.run_lock import RunLock\n"
    "RunLock().acquire(sys.argv[1], sys.argv[2])\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


@contextlib.contextmanager
def held_by_another_process(folder: Path, command: str = "train") -> Iterator[subprocess.Popen]:
    """The folder locked by a child process as ``command`` until the block ends, when it is
    SIGKILLed (so it never releases the lock itself)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), command],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        yield child
    finally:
        child.kill()
        child.wait()


def files_except_the_lock(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK_NAME}


def in_another_thread(work: Callable[[], object]) -> None:
    """Run ``work`` in a new thread (which holds no lock of this one) and raise what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]


def test_a_second_lock_names_its_holder_and_the_first_release_frees_the_folder(tmp_path):
    first, second = RunLock(), RunLock()
    first.acquire(tmp_path, "train")
    holder = f"Another vqkit process (train, process {os.getpid()}) is writing to '{tmp_path}'"
    with pytest.raises(VqkitError, match=f"^{re.escape(holder)}; wait for it to finish") as refused:
        in_another_thread(lambda: second.acquire(tmp_path, "train-prior"))
    assert str(refused.value).endswith(".")
    first.release()
    assert list(tmp_path.iterdir()) == []  # a released lock leaves the folder as it was
    in_another_thread(lambda: second.acquire(tmp_path, "train-prior"))
    assert (tmp_path / LOCK_NAME).read_text() == f"train-prior, process {os.getpid()}"
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_on_a_file_its_holder_removed_meanwhile_is_taken_on_the_new_one(
    tmp_path, monkeypatch
):
    """The holder removes the file between our open and our flock: the lock we then get is on
    a file no other process can find, so it must not count."""
    first = RunLock()
    first.acquire(tmp_path, "train")
    opened: list[int] = []
    real_open = run_lock._open

    def open_while_the_holder_finishes(path: Path) -> int:
        fd = real_open(path)
        if not opened:
            first.release()
        opened.append(fd)
        return fd

    monkeypatch.setattr(run_lock, "_open", open_while_the_holder_finishes)
    second = RunLock()
    in_another_thread(lambda: second.acquire(tmp_path, "train-prior"))
    assert len(opened) == 2  # the removed file was given up for the new one
    monkeypatch.undo()
    with pytest.raises(VqkitError, match="train-prior, process"):
        RunLock().acquire(tmp_path, "train")
    second.release()


def test_a_file_system_that_cannot_lock_runs_unlocked_and_leaves_no_file(tmp_path, monkeypatch):
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with RunLock() as lock:
        lock.acquire(tmp_path, "train")
        assert list(tmp_path.iterdir()) == []


def test_a_lock_whose_name_cannot_be_written_is_let_go_and_said_in_one_sentence(
    tmp_path, monkeypatch
):
    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_lock.os, "write", disk_full)
    with pytest.raises(VqkitError, match="No space left on device"):
        RunLock().acquire(tmp_path, "train")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with RunLock() as lock:  # nothing of the failed attempt is still held
        lock.acquire(tmp_path, "train")


def test_train_and_train_prior_refuse_a_run_another_process_is_writing(run_copy, capsys):
    before = files_except_the_lock(run_copy)
    commands = (
        ["train", "--resume", run_copy, "--epochs", "9"],
        ["train-prior", run_copy, "--epochs", "1"],
        ["train-prior", run_copy, "--resume"],  # the CLI reads the prior state before locking
    )
    with held_by_another_process(run_copy) as holder:
        for argv in commands:
            fails_cleanly(
                capsys,
                [*argv, "--quiet", "--device", "cpu"],
                f"Another vqkit process (train, process {holder.pid}) is writing to",
            )
        assert writer_of(run_copy) == f"train, process {holder.pid}"
        assert main(["runs", str(run_copy)]) == 0
        assert " (training)" in capsys.readouterr().out
        assert main(["report", str(run_copy)]) == 0
        report = (run_copy / runfiles.REPORT).read_text()
        assert (
            f"still being trained when this report was written (train, process {holder.pid})"
            in report
        )
        (run_copy / runfiles.REPORT).unlink()
    assert writer_of(run_copy) is None  # its file is still there, but no one holds it
    assert main(["runs", str(run_copy)]) == 0
    assert " (training)" not in capsys.readouterr().out
    assert files_except_the_lock(run_copy) == before
    # The holder died without releasing: the kernel dropped its lock, and the file it left is
    # taken and then removed by the next writer.
    assert (run_copy / LOCK_NAME).exists()
    assert main(["train", "--resume", str(run_copy), "--quiet", "--device", "cpu"]) == 0
    assert not (run_copy / LOCK_NAME).exists()


def test_a_new_run_is_refused_in_a_folder_another_process_holds(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    with held_by_another_process(folder):
        fails_cleanly(
            capsys,
            ["train", "--preset", "efficient", "--train-limit", "64", "--out", folder, "--quiet"],
            "is writing to",
        )
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # no config.json of ours


def test_a_new_run_into_a_folder_being_trained_names_its_trainer(run_copy, capsys):
    """After its first epoch a run being trained holds weights; a second `train --out` there
    must name the trainer, not advise a --resume that the lock would refuse."""
    before = files_except_the_lock(run_copy)
    with held_by_another_process(run_copy) as holder:
        fails_cleanly(
            capsys,
            ["train", "--preset", "efficient", "--train-limit", "64", "--out", run_copy, "--quiet"],
            f"(train, process {holder.pid}) is writing to",
        )
    assert files_except_the_lock(run_copy) == before


def test_a_model_before_its_first_epoch_ends_is_said_to_be_training(run_copy):
    (run_copy / runfiles.WEIGHTS).unlink()
    with held_by_another_process(run_copy) as holder:
        with pytest.raises(VqkitError, match=r"being trained in .* right now \(train, process"):
            load_model(run_copy)
        assert str(holder.pid) in why_no_weights_yet(run_copy)
    assert why_no_weights_yet(run_copy) is None  # a finished epoch's state: the file is lost


def test_every_rank_of_a_torchrun_job_stops_with_the_sentence(run_copy):
    """Only rank 0 takes the lock; the others must hear of its refusal, not wait for it."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "vqkit", "train", "--resume", str(run_copy), "--epochs", "9", "--quiet",
        "--device", "cpu",
    ]  # fmt: skip
    before = files_except_the_lock(run_copy)
    with held_by_another_process(run_copy):
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    # Every process refuses alike, so the sentence is printed once (by the first process).
    assert done.stderr.count("is writing to") == 1, done.stderr[-3000:]
    # The one traceback is torchrun's own report of a worker that exited with status 2.
    assert done.stderr.count("Traceback") == 1 and "exitcode: 2" in done.stderr, done.stderr
    assert files_except_the_lock(run_copy) == before


@pytest.mark.parametrize("settings_written", [True, False], ids=["first-epoch", "old-set-aside"])
def test_a_prior_being_trained_is_said_to_be_training_not_stopped_or_absent(
    settings_written, run_copy
):
    # train-prior writes its settings first (and sets an older prior's files aside before).
    if settings_written:
        (run_copy / runfiles.PRIOR_CONFIG).write_text("{}")
    with held_by_another_process(run_copy, "train-prior") as holder:
        reason = incomplete_prior(run_copy)
        expected = f"being trained in '{run_copy}' right now (train-prior, process {holder.pid})"
        assert reason is not None and expected in reason, reason
        row = run_row(run_copy)  # the prior column says so; the VQ-VAE is not being trained
        assert row[COLUMNS.index("prior bits/code")] == "(training)"
        assert "(training)" not in row[COLUMNS.index("epochs")]
    after = incomplete_prior(run_copy)  # once its trainer is gone
    assert ("is incomplete" in str(after)) if settings_written else after is None


def test_a_demo_holding_its_folder_is_said_to_train_the_prior_once_the_prior_has_files(run_copy):
    # The demo holds the lock through all its stages under its own name, "demo".
    with held_by_another_process(run_copy, "demo") as holder:
        row = run_row(run_copy)  # its VQ-VAE's epochs are done, and no prior file exists yet
        assert "(training)" not in row[COLUMNS.index("epochs")]
        assert "(training)" not in row[COLUMNS.index("prior bits/code")]
        assert incomplete_prior(run_copy) is None
        (run_copy / runfiles.PRIOR_CONFIG).write_text("{}")  # its prior stage has begun
        expected = f"being trained in '{run_copy}' right now (demo, process {holder.pid})"
        assert expected in str(incomplete_prior(run_copy))
        assert run_row(run_copy)[COLUMNS.index("prior bits/code")] == "(training)"
    assert "is incomplete" in str(incomplete_prior(run_copy))  # once the demo is gone


def test_a_process_does_not_see_its_own_lock_as_another_writer(tmp_path):
    with RunLock() as lock:
        lock.acquire(tmp_path, "demo")
        assert writer_of(tmp_path) is None
        with RunLock() as nested:  # the same thread again (train-prior inside the demo)
            nested.acquire(tmp_path, "train-prior")
        assert (tmp_path / LOCK_NAME).read_text().startswith("demo,")  # still the demo's
        with pytest.raises(VqkitError, match=r"Another vqkit process \(demo, process"):
            in_another_thread(lambda: RunLock().acquire(tmp_path, "train"))
    assert writer_of(tmp_path) is None and list(tmp_path.iterdir()) == []


def test_a_lock_once_released_does_not_hide_the_next_writer_from_this_process(tmp_path):
    # writer_of skips the locks this process holds; one it has let go must count again, or
    # `vqkit runs` and the resume checks would miss the process that took the folder next.
    with RunLock() as lock:
        lock.acquire(tmp_path, "train")
    with held_by_another_process(tmp_path, "train-prior") as child:
        assert writer_of(tmp_path) == f"train-prior, process {child.pid}"


def test_a_lock_file_left_with_a_longer_holder_text_is_rewritten_whole(tmp_path):
    # A killed holder leaves its file behind; the next holder's shorter text must replace it,
    # not overwrite its start ("train, process 42" + "34567" of the old number).
    (tmp_path / LOCK_NAME).write_text("train-prior, process 1234567")
    with RunLock() as lock:
        lock.acquire(tmp_path, "train")
        assert (tmp_path / LOCK_NAME).read_text() == f"train, process {os.getpid()}"


def test_a_run_another_process_saved_before_the_lock_was_taken_is_not_trained_over(
    tmp_path, monkeypatch
):
    # The folder is checked, then locked: a process that saved weights there in between
    # (while this one waited for the lock) must still be seen, by the check under the lock.
    run_dir = tmp_path / "run"
    real_acquire = RunLock.acquire

    def acquire_after_another_run_saved(self, folder, command):
        (Path(folder) / runfiles.WEIGHTS).write_bytes(b"the other run's weights")
        real_acquire(self, folder, command)

    monkeypatch.setattr(RunLock, "acquire", acquire_after_another_run_saved)
    config = preset_config("efficient")
    config.train.train_limit, config.train.test_limit = 64, 16
    with pytest.raises(
        VqkitError, match="already holds a run \\(finished or not\\); continue it with"
    ):
        train(config, run_dir, device="cpu", progress=False)
    assert (run_dir / runfiles.WEIGHTS).read_bytes() == b"the other run's weights"


def test_a_writer_waits_out_a_look_that_holds_the_lock_for_an_instant(tmp_path, monkeypatch):
    real_flock = run_lock.fcntl.flock
    refusals = iter([True, True])  # a reader's shared look, seen by two tries

    def busy_twice(fd: int, operation: int) -> None:
        if operation & run_lock.fcntl.LOCK_EX and next(refusals, False):
            raise BlockingIOError
        real_flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", busy_twice)
    with RunLock() as lock:
        lock.acquire(tmp_path, "train")
        assert (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_kept(
    run_copy, tmp_path, capsys
):
    # The holder's name was written through the link: another run's weights became a line.
    target = tmp_path / "other-weights.safetensors"
    target.write_bytes((run_copy / runfiles.WEIGHTS).read_bytes())
    kept = target.read_bytes()
    (run_copy / LOCK_NAME).symlink_to(target)
    before = files_except_the_lock(run_copy)
    for argv in (["train", "--resume", run_copy, "--epochs", "2"], ["train-prior", run_copy]):
        fails_cleanly(
            capsys,
            [*argv, "--quiet", "--device", "cpu"],
            f"The run folder's lock file '{run_copy / LOCK_NAME}' is a symbolic link",
        )
    assert target.read_bytes() == kept and files_except_the_lock(run_copy) == before
    assert writer_of(run_copy) is None  # a look at the folder neither follows it
