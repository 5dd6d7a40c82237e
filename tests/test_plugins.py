"""A quantizer of one's own on the command line: --plugin files and modules, and installed
packages' entry points."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import fails_cleanly
from process_helpers import child_env, vqkit_command

from vqkit import generate, plugins, runfiles
from vqkit.cli import main, take_plugins
from vqkit.config import REGISTERED_QUANTIZERS, QuantizerConfig
from vqkit.environment import read_records
from vqkit.errors import QuantizerLoadError, UnknownQuantizer
from vqkit.plugins import entry_point_names
from vqkit.quantize import build_quantizer

PLUGIN_SOURCE = """
from vqkit.quantize import register_quantizer
from vqkit.vq import VectorQuantizer


@register_quantizer("{name}")
class PluginVQ(VectorQuantizer):
    pass
"""


# Modules the tests below create: plugin files, modules and packages, and their helpers.
TEST_MODULE_PREFIXES = (
    "vqkit_plugin_", "module_plugin_vq", "installed_vq_package", "broken_vq_package", "helper_",
)  # fmt: skip


@pytest.fixture(autouse=True)
def forget_plugins():
    """Each test starts and leaves the process with the registry, modules and plugin memory it
    found, so no test's quantizer names leak into another's choices or messages."""
    registered, modules, imported = (
        dict(REGISTERED_QUANTIZERS),
        set(sys.modules),
        set(plugins._IMPORTED),
    )
    strategies = dict(generate._STRATEGIES)
    yield
    REGISTERED_QUANTIZERS.clear()
    REGISTERED_QUANTIZERS.update(registered)
    generate._STRATEGIES.clear()
    generate._STRATEGIES.update(strategies)
    for name in set(sys.modules) - modules:
        if name.startswith(TEST_MODULE_PREFIXES):
            del sys.modules[name]
    plugins._IMPORTED.clear()
    plugins._IMPORTED.update(imported)


TRAIN_FLAGS = [
    "--preset", "efficient", "--train-limit", "256", "--test-limit", "64", "--epochs", "1",
    "--quiet", "--device", "cpu",
]  # fmt: skip


def train_through_a_plugin_file(
    tmp_path: Path, capsys, name: str, *flags: str
) -> tuple[Path, Path]:
    """Train a tiny run with quantizer ``name`` from a plugin file; (plugin file, run folder)."""
    plugin = tmp_path / f"{name.replace('-', '_')}.py"
    plugin.write_text(PLUGIN_SOURCE.format(name=name))
    run = tmp_path / "run"
    code = main(["--plugin", str(plugin), "train", "--quantizer", name, *TRAIN_FLAGS, *flags,
                 "--out", str(run)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    return plugin, run


def test_plugin_flags_are_taken_out_wherever_they_stand():
    specs, rest = take_plugins(["--plugin", "a.py", "runs", "--plugin=b", "x", "--plugin"])
    assert specs == ["a.py", "b", ""]
    assert rest == ["runs", "x"]


def test_a_run_trained_through_a_plugin_file_needs_it_to_be_read_again(tmp_path, capsys):
    plugin, run = train_through_a_plugin_file(tmp_path, capsys, "plugin-file-vq")
    assert json.loads((run / runfiles.CONFIG).read_text())["model"]["quantizer"]["quantizer"] == (
        "plugin-file-vq"
    )
    # A fresh process knows nothing of the plugin: one sentence saying how, and runs marks it.
    evaluate = subprocess.run(
        vqkit_command("evaluate", str(run)), env=child_env(), capture_output=True, text=True
    )
    assert evaluate.returncode == 2
    assert f"The run '{run}' was trained with the quantizer 'plugin-file-vq'" in evaluate.stderr
    assert "--plugin" in evaluate.stderr
    assert "Traceback" not in evaluate.stderr
    listed = subprocess.run(
        vqkit_command("runs", str(tmp_path)), env=child_env(), capture_output=True, text=True
    )
    assert "(needs --plugin for 'plugin-file-vq')" in listed.stdout, listed.stdout
    # With the plugin, given after the command this time, the run loads and evaluates.
    evaluate = subprocess.run(
        vqkit_command("evaluate", str(run), "--plugin", str(plugin)),
        env=child_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr
    assert "test MSE" in evaluate.stdout


def test_a_plugin_quantizer_takes_the_codebook_size_flag(tmp_path, capsys):
    # The plugin's class is a VectorQuantizer: --num-embeddings sizes its codebook.
    _, run = train_through_a_plugin_file(tmp_path, capsys, "sized-vq", "--num-embeddings", "64")
    quantizer = json.loads((run / runfiles.CONFIG).read_text())["model"]["quantizer"]
    assert quantizer["num_embeddings"] == 64


def test_a_run_records_the_plugin_code_and_its_report_says_when_it_changed(tmp_path, capsys):
    plugin, run = train_through_a_plugin_file(tmp_path, capsys, "recorded-vq")
    (session,) = read_records(run)
    assert session["quantizer"]["file"] == str(plugin.resolve())
    assert session["quantizer"]["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert session["quantizer"]["class"].endswith(".PluginVQ")
    report = run / runfiles.REPORT
    assert main(["report", str(run)]) == 0
    assert "has changed since" not in report.read_text()
    plugin.write_text(plugin.read_text() + "\n# edited after training\n")
    assert main(["report", str(run)]) == 0
    assert "recorded_vq.py, which has changed since the run was last trained" in report.read_text()


def test_a_plugin_module_is_found_in_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "module_plugin_vq.py").write_text(PLUGIN_SOURCE.format(name="module-plugin-vq"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["--plugin", "module_plugin_vq", "runs", str(tmp_path)]) == 0
    assert REGISTERED_QUANTIZERS["module-plugin-vq"].__module__ == "module_plugin_vq"
    assert str(tmp_path) not in sys.path  # the folder was on the path for the import only
    capsys.readouterr()


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("missing_plugin_file.py", ["missing_plugin_file.py does not exist"]),
        ("no_such_plugin_module", ["No module named 'no_such_plugin_module'"]),
        ("", ["--plugin needs a .py file or a module name"]),
        ("--quiet", ["--plugin needs a .py file or a module name"]),
        ("json", ["'json' is a module Python has already imported"]),
        ("./my_plugin", ["looks like a path; give the file's name with .py"]),
    ],
)
def test_a_plugin_that_cannot_be_found_is_one_sentence(capsys, spec, fragments):
    fails_cleanly(capsys, ["--plugin", spec, "runs"], *fragments)


def test_a_plugin_path_that_is_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "plugins.py"  # a folder was said not to exist
    folder.mkdir()
    fails_cleanly(capsys, ["--plugin", folder, "runs"], "plugins.py is a folder; give a .py file")


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("import math\n\nmath.sqrt(-1)\n", ["ValueError: math domain error", "line 3"]),
        ("def broken(:\n", ["SyntaxError: invalid syntax (at broken_plugin.py, line 1)"]),
        ("raise RuntimeError('two\\nlines')\n", ["RuntimeError: two lines (at"]),
        (PLUGIN_SOURCE.format(name="fsq"), ["'fsq' is a built-in quantizer"]),
        ("VALUE = 1\n", ["registered no quantizer and no sampling strategy; it must call"]),
        # Importing vqkit's strategies registers vqkit's own, not the plugin's.
        ("import vqkit.generate, vqkit.prior\n", ["registered no quantizer and no sampling"]),
        ("import sys\n\nsys.exit(0)\n", ["SystemExit: 0 (at broken_plugin.py, line 3)"]),
    ],
)
def test_a_plugin_that_raises_is_one_sentence_naming_where(tmp_path, capsys, source, fragments):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(source)
    fails_cleanly(capsys, ["--plugin", plugin, "runs", tmp_path], *fragments)


def test_an_abbreviated_plugin_flag_is_refused_not_ignored(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["--plug", str(tmp_path / "x.py"), "runs", str(tmp_path)])
    assert exit_status.value.code == 2
    # --plug is no flag of vqkit's, so the plugin's path stands where the command should.
    assert "argument COMMAND: invalid choice: '" in capsys.readouterr().err


def test_plugins_of_one_name_in_two_folders_both_load_and_each_runs_once(tmp_path, capsys):
    # Each plugin imports a helper module beside it and appends to a log when it runs.
    for folder, quantizer in (("a", "folder-a-vq"), ("b", "folder-b-vq")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"helper_{folder}.py").write_text(f"NAME = '{quantizer}'\n")
        (tmp_path / folder / "same_name.py").write_text(
            f"from helper_{folder} import NAME\n"
            f"open({str(tmp_path / 'log')!r}, 'a').write(NAME + '\\n')\n"
            + PLUGIN_SOURCE.replace('"{name}"', "NAME")
        )
    a, b = str(tmp_path / "a" / "same_name.py"), str(tmp_path / "b" / "same_name.py")
    assert main(["--plugin", a, "--plugin", b, "--plugin", a, "runs", str(tmp_path)]) == 0
    assert (tmp_path / "log").read_text().split() == ["folder-a-vq", "folder-b-vq"]
    assert {"folder-a-vq", "folder-b-vq"} <= set(REGISTERED_QUANTIZERS)
    capsys.readouterr()


def test_a_plugin_file_linked_to_a_file_of_another_name_loads(tmp_path, capsys):
    # The resolved name has no .py suffix: no loader was found for it (an AttributeError).
    (tmp_path / "linked_vq_source.txt").write_text(PLUGIN_SOURCE.format(name="linked-vq"))
    (tmp_path / "linked_plugin.py").symlink_to(tmp_path / "linked_vq_source.txt")
    assert main(["--plugin", str(tmp_path / "linked_plugin.py"), "runs", str(tmp_path)]) == 0
    assert "linked-vq" in REGISTERED_QUANTIZERS
    capsys.readouterr()


def test_a_plugin_path_may_start_with_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "home_plugin.py").write_text(PLUGIN_SOURCE.format(name="home-vq"))
    assert main(["--plugin", "~/home_plugin.py", "runs", str(tmp_path)]) == 0
    assert "home-vq" in REGISTERED_QUANTIZERS
    capsys.readouterr()


def test_two_processes_train_with_a_plugin_quantizer(tmp_path):
    plugin = tmp_path / "ddp_plugin.py"
    plugin.write_text(PLUGIN_SOURCE.format(name="ddp-plugin-vq"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "vqkit", "--plugin", str(plugin), "train", "--quantizer", "ddp-plugin-vq",
        *TRAIN_FLAGS, "--out", "run",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "run" / runfiles.CONFIG).read_text())
    assert config["model"]["quantizer"]["quantizer"] == "ddp-plugin-vq"


def write_installed_package(
    root: Path, quantizer: str, module: str, source: str = PLUGIN_SOURCE
) -> None:
    """What pip leaves for a package offering ``quantizer`` under vqkit's entry points."""
    (root / f"{module}.py").write_text(source.format(name=quantizer))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vqkit.quantizers]\n{quantizer} = {module}:PluginVQ\n")


def test_an_installed_quantizer_is_found_by_name_and_imported_only_then(tmp_path, monkeypatch):
    write_installed_package(tmp_path, "installed-vq", "installed_vq_package")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "installed-vq" in entry_point_names()
    assert "installed_vq_package" not in sys.modules
    quantizer = build_quantizer(QuantizerConfig(quantizer="installed-vq"))
    assert type(quantizer).__module__ == "installed_vq_package"
    with pytest.raises(UnknownQuantizer, match="entry points 'vqkit.quantizers'"):
        QuantizerConfig(quantizer="offered-by-nobody")


def test_train_offers_an_installed_quantizer_on_the_command_line(tmp_path):
    packages = tmp_path / "site"
    packages.mkdir()
    write_installed_package(packages, "command-line-vq", "command_line_vq_package")
    env = child_env()
    env["PYTHONPATH"] = f"{packages}:{env['PYTHONPATH']}"
    done = subprocess.run(
        vqkit_command("train", "--quantizer", "command-line-vq", *TRAIN_FLAGS, "--out", "run"),
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(
        vqkit_command("runs", str(tmp_path)), env=env, capture_output=True, text=True
    )
    # The run reads back in a fresh process without any --plugin: its row has the numbers.
    row = listed.stdout.strip().splitlines()[-1]  # under the header
    assert "needs --plugin" not in row and " mnist " in row, listed.stdout


def test_an_installed_quantizer_that_fails_to_import_is_named(
    tmp_path, monkeypatch, capsys, run_copy
):
    write_installed_package(tmp_path, "broken-installed-vq", "broken_vq_package", "1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(QuantizerLoadError, match="ZeroDivisionError") as failure:
        QuantizerConfig(quantizer="broken-installed-vq")
    assert failure.value.name == "broken-installed-vq"
    assert "(at broken_vq_package.py, line 1)" in str(failure.value)  # where, in its own code
    # A run that names it is listed as such, not as a damaged config.
    config = json.loads((run_copy / runfiles.CONFIG).read_text())
    config["model"]["quantizer"]["quantizer"] = "broken-installed-vq"
    (run_copy / runfiles.CONFIG).write_text(json.dumps(config))
    assert main(["runs", str(run_copy.parent)]) == 0
    assert "(quantizer 'broken-installed-vq' failed to load)" in capsys.readouterr().out


def test_an_installed_quantizer_whose_module_is_gone_names_no_import_machinery(
    tmp_path, monkeypatch
):
    write_installed_package(tmp_path, "gone-vq", "gone_vq_package")
    (tmp_path / "gone_vq_package.py").unlink()  # the entry point outlived its module
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(QuantizerLoadError, match="No module named 'gone_vq_package'") as failure:
        QuantizerConfig(quantizer="gone-vq")
    assert "frozen" not in str(failure.value) and "(at " not in str(failure.value)


def test_an_installed_quantizer_that_is_no_module_class_is_refused_by_name(tmp_path, monkeypatch):
    # A factory function was registered as it was; building a model then raised
    # AttributeError ('int' has no attribute 'forward').
    write_installed_package(
        tmp_path, "factory-vq", "factory_vq_package", "def PluginVQ(config):\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(QuantizerLoadError, match="is not a class derived from torch.nn.Module"):
        QuantizerConfig(quantizer="factory-vq")


def test_a_plugin_may_register_a_sampling_strategy_that_sample_then_offers(run_copy, tmp_path):
    # The example of docs/generation.md, as written, imported with --plugin.
    guide = Path(__file__).resolve().parent.parent / "docs" / "generation.md"
    (source,) = [b for b in re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)
                 if "@register_strategy" in b]  # fmt: skip
    plugin = tmp_path / "vqkit_plugin_strategies.py"
    plugin.write_text(source)
    out, codes_out = tmp_path / "mirrored.npy", tmp_path / "codes.npy"
    assert main(["--plugin", str(plugin), "sample", str(run_copy), "--strategy", "mirrored",
                 "--n", "5", "--out", str(out), "--codes-out", str(codes_out)]) == 0  # fmt: skip
    codes = np.load(codes_out)
    assert codes.shape == (5, 7, 7) and np.array_equal(codes, codes[..., ::-1])
    assert len(np.unique(codes)) > 1  # drawn, not constant
    assert np.load(out).shape[0] == 5


def test_a_plugin_registering_one_of_vqkits_functions_under_a_new_name_is_accepted(tmp_path):
    plugin = tmp_path / "vqkit_plugin_alias.py"
    plugin.write_text(
        "from vqkit import generate\n\n"
        'generate.register_strategy("uniform")(generate.registered_strategies()["random"])\n'
    )
    plugins.import_plugin(str(plugin))
    assert generate.registered_strategies()["uniform"] is generate.registered_strategies()["random"]


@pytest.mark.parametrize("given", ["../helped_plugin.py", "linked_helped_plugin.py"])
def test_a_failure_is_placed_in_the_plugin_given_by_a_path_not_its_own(
    tmp_path, monkeypatch, capsys, given
):
    """A plugin given as ../plugin.py, or by a link, runs from that path, not the resolved
    one: its frames did not match the resolved path, and a failure was placed in the helper
    module it called (helper.py, line 2) instead of the plugin's own line."""
    (tmp_path / "plugin_helper.py").write_text("def fail():\n    raise ValueError('boom')\n")
    (tmp_path / "helped_plugin.py").write_text("import plugin_helper\n\nplugin_helper.fail()\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "linked_helped_plugin.py").symlink_to(tmp_path / "helped_plugin.py")
    monkeypatch.chdir(tmp_path / "sub")
    fails_cleanly(capsys, ["--plugin", given, "runs", tmp_path], "boom (at ", ", line 3).")
