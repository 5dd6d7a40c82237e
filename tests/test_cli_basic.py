"""train / evaluate / reconstruct end to end through the command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image
from process_helpers import child_env
from report_helpers import PRIOR_CONFIG, make_full_run

import vqkit
from vqkit import runfiles
from vqkit.cli import COMMAND_MODULES, main
from vqkit.report import write_report


def test_train_evaluate_reconstruct_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    status = main(
        [
            "train",
            "--preset",
            "efficient",
            "--epochs",
            "1",
            "--train-limit",
            "1024",
            "--test-limit",
            "200",
            "--hidden-dim",
            "16",
            "--out",
            str(run),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "test MSE" in printed and str(run) in printed
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["hidden_dim"] == 16 and saved["train"]["epochs"] == 1

    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_codes"] == 128 and 0 < metrics["test_mse"] < 1
    assert metrics["bits_per_image"] == 49 * 7  # 49 codes of log2(128) = 7 bits
    # The CLI prints what the Python function returns (the whole test set, unlike training's
    # --test-limit).
    assert metrics == vqkit.evaluate_run(run, device="cpu")

    out = tmp_path / "recon.png"
    assert main(["reconstruct", str(run), "--out", str(out), "--n", "5"]) == 0
    with Image.open(out) as figure:
        assert figure.size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))


def test_user_errors_are_one_sentence_and_status_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("vqkit: error: ") and message.endswith(".")
    assert "Traceback" not in message and len(message.splitlines()) == 1
    assert main(["train", "--lr", "0", "--out", str(tmp_path / "x")]) == 2
    assert "learning rate" in capsys.readouterr().err


def test_module_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "vqkit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "train" in result.stdout and "evaluate" in result.stdout


# Sends the process a real SIGINT at the moment the command line starts importing PyTorch,
# then runs the program as `python -m vqkit` does; at exit, whether PyTorch and the command
# line were imported whole.
INTERRUPTED_WHILE_LOADING = """
import atexit, builtins, os, runpy, signal, sys
atexit.register(lambda: print(hasattr(sys.modules.get("torch"), "nn"), "vqkit.cli" in sys.modules))
real_import = builtins.__import__
def interrupting(name, *args, **kwargs):
    if name == "torch" and "torch" not in sys.modules:
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = interrupting
sys.argv = ["vqkit", "evaluate", sys.argv[1]]
runpy.run_module("vqkit", run_name="__main__")
"""


def test_a_ctrl_c_while_pytorch_loads_ends_in_one_line(tmp_path):
    # It used to print Python's KeyboardInterrupt traceback: `import vqkit` imported PyTorch
    # before any handler of the program's could run. Then, raised inside the import, the
    # KeyboardInterrupt was at times swallowed by Python's import machinery (the command ran
    # on) or left NumPy half-imported (a traceback later): the import now finishes whole and
    # the command ends before it starts.
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_WHILE_LOADING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = (130, "vqkit: interrupted.\n", "True True\n")
    assert (result.returncode, result.stderr, result.stdout) == expected


# Runs the program as `python -m vqkit` does, then says on stderr its exit status and which
# heavy libraries it imported.
IMPORTS_OF_A_COMMAND_LINE = """
import runpy, sys
sys.argv = ["vqkit", *sys.argv[1:]]
status = 0
try:
    runpy.run_module("vqkit", run_name="__main__")
except SystemExit as exc:
    status = exc.code
heavy = [name for name in ("torch", "numpy", "PIL", "matplotlib") if name in sys.modules]
print(status, *heavy, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["trian"],
        ["train", "--epochs", "x"],
        ["train", "--preset", "nope"],
        ["train", "--no-such-flag"],
        ["train-prior", "--layers", "0"],
        ["interpolate", "RUN", "--from", "0", "--to", "1", "--mode", "fade", "--out", "i.png"],
        *([name, "--help"] for name in COMMAND_MODULES if name != "sample"),
    ],
)
def test_help_and_mistyped_flags_answer_without_loading_pytorch(argv):
    # They waited 2-3 s on a 2-core machine for PyTorch, which parsing never needs. (sample's
    # --help lists the strategies, which their modules register: it loads PyTorch.)
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_A_COMMAND_LINE, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    status = result.stderr.splitlines()[-1]
    assert status in ("0", "2"), result.stderr


def runs_listed_without_pytorch(root: Path, capsys, *flags: str) -> str:
    """`vqkit runs ROOT`'s table (with ``flags``), checked to be the same from a fresh process
    that imports neither PyTorch nor NumPy for it."""
    assert main(["runs", *flags, str(root)]) == 0
    in_process = capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_A_COMMAND_LINE, "runs", *flags, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    status, *heavy = result.stderr.splitlines()[-1].split()
    assert status == "0" and "torch" not in heavy and "numpy" not in heavy, result.stderr
    assert result.stdout == in_process
    return in_process


def test_runs_lists_run_folders_without_loading_pytorch(run_copy, capsys):
    # `vqkit runs` took 2.5-3.3 s on a 2-core machine, nearly all of it PyTorch's import,
    # to read JSON files and hash weights; it reads them without it now.
    make_full_run(run_copy)
    (run_copy / runfiles.CODE_USAGE).unlink()  # counts of other weights: noted as stale
    write_report(run_copy)
    in_process = runs_listed_without_pytorch(run_copy.parent, capsys)
    assert " yes" in in_process
    [record] = json.loads(runs_listed_without_pytorch(run_copy.parent, capsys, "--json"))
    assert record["report"] == "yes"


def test_runs_reads_a_prior_stopped_in_its_first_epoch_without_loading_pytorch(run_copy, capsys):
    # A prior stopped inside its first epoch has settings and a resumable state but no weights:
    # saying so read the state's counters through PyTorch's loader, imported mid-listing (where
    # a Ctrl-C lands inside the import). The counters are read without it, in the same words.
    import torch

    from vqkit import train_state
    from vqkit.prior import incomplete_prior, save_prior_config

    save_prior_config(run_copy, PRIOR_CONFIG)
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(layer.parameters())
    position = train_state.Position(step=3, global_step=3)
    order, loss_sum = torch.Generator().get_state(), torch.zeros(1)
    args = (run_copy, position, layer, optimizer, order, loss_sum)
    train_state.save(*args, files=train_state.PRIOR_FILES, extra={"finished": False})
    reason = incomplete_prior(run_copy)
    assert "stopped before its first epoch ended" in str(reason), reason
    assert train_state.saved_position(run_copy, train_state.PRIOR_FILES) == position
    assert "(incomplete)" in runs_listed_without_pytorch(run_copy.parent, capsys)


# `vqkit runs` broken by an error the command line does not expect, then run as above, with
# the error caught where the exit status was.
RUNS_BROKEN_BY_A_BUG = """
import vqkit.runs
def broken(root):
    raise RuntimeError("a bug")
vqkit.runs.runs_table = broken
""" + IMPORTS_OF_A_COMMAND_LINE.replace(
    "except SystemExit as exc:\n    status = exc.code", "except RuntimeError:\n    status = 'bug'"
)


def test_a_bug_in_runs_reaches_its_traceback_without_loading_pytorch(tmp_path):
    # Looking for an out-of-memory or lost-process sentence in the error imported PyTorch (and
    # torch.distributed) first: 3 s more before the traceback of a command that never uses it.
    result = subprocess.run(
        [sys.executable, "-c", RUNS_BROKEN_BY_A_BUG, "runs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    status, *heavy = result.stderr.splitlines()[-1].split()
    assert status == "bug" and "torch" not in heavy, result.stderr


def test_importing_vqkit_leaves_pytorch_unloaded_until_a_name_is_used():
    check = (
        "import sys, vqkit; before = 'torch' in sys.modules; model = vqkit.VQVAE; "
        "print(before, 'torch' in sys.modules, model.__module__, sorted(vqkit.__all__) == "
        "sorted(n for n in dir(vqkit) if n in vqkit.__all__))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True", "vqkit.model", "True"], result.stderr
    # Submodules are reached through the package as when `import vqkit` imported them all
    # (the docs' vqkit.codes_io.encode_images; plugins' @vqkit.quantize.register_quantizer).
    check = "import vqkit; print(vqkit.codes_io.encode_images.__name__, vqkit.quantize.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["encode_images", "vqkit.quantize"], result.stderr
    try:
        vqkit.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_name'" in str(exc)
    else:
        raise AssertionError("an unknown name was found")


def test_the_program_starts_at_the_handler_of_a_ctrl_c_while_loading():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["vqkit"] == "vqkit.entry:main"


def test_train_from_a_saved_config_with_overrides(small_run, tmp_path, capsys):
    tiny = ["--epochs", "1", "--train-limit", "128", "--test-limit", "50", "--quiet"]
    again = tmp_path / "again"
    assert main(["train", "--config", str(small_run.run_dir), "--seed", "7", *tiny,
                 "--out", str(again), "--device", "cpu"]) == 0  # fmt: skip
    source = json.loads((small_run.run_dir / "config.json").read_text())
    copied = json.loads((again / "config.json").read_text())
    assert copied["train"]["seed"] == 7 and copied["train"]["train_limit"] == 128
    assert copied["train"]["lr"] == source["train"]["lr"] == 3e-3  # not the preset's 1e-3
    assert copied["model"] == source["model"] and copied["preset"] == source["preset"]

    # A config.json file works as well as a run folder; its settings are used as written.
    edited = {**source, "model": {**source["model"], "hidden_dim": 8}}
    config_file = tmp_path / "narrow.json"
    config_file.write_text(json.dumps(edited))
    narrow = tmp_path / "narrow"
    assert main(["train", "--config", str(config_file), *tiny, "--out", str(narrow)]) == 0
    assert json.loads((narrow / "config.json").read_text())["model"]["hidden_dim"] == 8
    capsys.readouterr()

    for wrong, words in [
        (["--config", str(config_file), "--preset", "efficient"], "not both"),
        (["--config", str(tmp_path / "missing.json")], "does not exist"),
        (["--resume", str(narrow), "--config", str(config_file)], "cannot take --out, --config"),
    ]:
        assert main(["train", *wrong, "--out", str(tmp_path / "never"), "--quiet"]) == 2
        message = capsys.readouterr().err
        assert words in message and "Traceback" not in message
    assert not (tmp_path / "never").exists()


def test_the_program_ignores_a_ctrl_c_once_its_command_has_ended(tmp_path, monkeypatch, capsys):
    # Python's shutdown after a finished command used to die by SIGINT (status -2, no word).
    monkeypatch.setattr(sys, "argv", ["vqkit", "runs", str(tmp_path)])
    before = signal.getsignal(signal.SIGINT)
    try:
        assert main() == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert main(["runs", str(tmp_path)]) == 0  # called from Python, nothing is changed
    assert signal.getsignal(signal.SIGINT) is before
    assert "No run folders" in capsys.readouterr().out
