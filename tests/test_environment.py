"""Each training session logs its versions, machine and quantizer code in environment.jsonl."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

import vqkit
from vqkit import acceleration, runfiles
from vqkit.checkpoint import load_config, save_config
from vqkit.config import preset_config
from vqkit.environment import changed_quantizer_code, read_records
from vqkit.prior import PriorConfig
from vqkit.prior_training import train_prior
from vqkit.report import render_report
from vqkit.runinfo import load_run_info
from vqkit.training import train


def test_a_new_run_logs_one_session_and_each_resume_another(run_copy):
    (start,) = read_records(run_copy)
    assert start["stage"] == "train" and start["resumed"] is False
    assert (start["vqkit"], start["torch"]) == (vqkit.__version__, torch.__version__)
    assert start["numpy"] == np.__version__
    assert start["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (start["device"], start["processes"]) == ("cpu", 1)
    assert start["threads"] == torch.get_num_threads()
    assert start["quantizer"] == {"name": "vq", "builtin": True}
    assert start["precision"] == load_config(run_copy).train.precision == "fp32"
    # Which code trained the run: every .py file of the package, its path and bytes.
    package = Path(vqkit.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    assert start["vqkit_source_sha256"] == digest.hexdigest()
    started = datetime.fromisoformat(start["started"])
    assert timedelta(0) <= datetime.now(UTC) - started < timedelta(hours=6)

    config = load_config(run_copy)
    config.train.epochs = 2
    train(config, run_copy, device="cpu", progress=False, resume=True)
    first, again = read_records(run_copy)
    assert first == start
    assert again["resumed"] is True
    assert again["global_step"] == -(-4000 // 64)  # the small run's one epoch of steps


@pytest.mark.parametrize(("native", "ran"), [(True, "bf16"), (False, "fp32")])
def test_precision_auto_is_logged_as_what_it_ran(tmp_path, monkeypatch, native, ran):
    # config.json keeps 'auto' (the user's choice); a reader needs what it became on this
    # machine, since bf16 and fp32 train different weights.
    monkeypatch.setattr(acceleration, "bf16_is_fast", lambda device: native)
    config = preset_config("efficient")
    config.train.epochs, config.train.batch_size, config.train.precision = 1, 64, "auto"
    config.train.train_limit, config.train.test_limit = 128, 64
    train(config, tmp_path / "run", device="cpu", progress=False)
    (record,) = read_records(tmp_path / "run")
    assert record["precision"] == ran and load_config(tmp_path / "run").train.precision == "auto"
    settings = PriorConfig(channels=8, layers=2, epochs=1, train_limit=64, test_limit=32)
    train_prior(tmp_path / "run", settings, device="cpu", progress=False)
    assert read_records(tmp_path / "run")[-1]["precision"] == ran
    assert f"<td>{ran}</td>" in render_report(load_run_info(tmp_path / "run"))


def test_a_start_stopped_before_its_first_save_begins_its_log_again(tmp_path):
    config = preset_config("efficient")
    config.train.epochs, config.train.batch_size = 1, 64
    config.train.train_limit, config.train.test_limit = 256, 64
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(run_dir, config)  # what a start killed before its first save leaves
    (run_dir / runfiles.ENVIRONMENT).write_text('{"stage": "train", "started": "earlier"}\n')
    train(config, run_dir, device="cpu", progress=False)
    (record,) = read_records(run_dir)
    assert record["started"] != "earlier" and record["resumed"] is False


def test_training_a_prior_logs_its_session_too(gridded_copy):
    settings = PriorConfig(channels=8, layers=2, epochs=1, train_limit=256, test_limit=64)
    train_prior(gridded_copy, settings, device="cpu", progress=False)
    stages = [(r["stage"], r["resumed"]) for r in read_records(gridded_copy)]
    assert stages == [("train", False), ("train-prior", False)]


def test_the_report_lists_the_sessions_and_skips_a_damaged_line(run_copy):
    with (run_copy / runfiles.ENVIRONMENT).open("a") as log:
        log.write("{not json\n")
    info = load_run_info(run_copy)
    assert len(info.environment) == 1
    html = render_report(info)
    assert "sessions" in html and "vq (built in)" in html
    assert info.environment[0]["device_name"] in html


def test_a_changed_or_missing_quantizer_file_is_named(tmp_path):
    code = tmp_path / "my_vq.py"
    code.write_text("# a quantizer\n")
    source = {
        "name": "my-vq",
        "file": str(code),
        "sha256": hashlib.sha256(code.read_bytes()).hexdigest(),
    }
    records = [{"stage": "train", "quantizer": source}]
    assert changed_quantizer_code(records) is None
    code.write_text("# a quantizer, edited\n")
    said = changed_quantizer_code(records)
    assert said is not None and str(code) in said and "has changed" in said
    code.unlink()
    said = changed_quantizer_code(records)
    assert said is not None and "no longer exists" in said
    assert changed_quantizer_code([{"stage": "train", "quantizer": {"name": "vq"}}]) is None
    assert changed_quantizer_code([]) is None
