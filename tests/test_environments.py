"""vqkit where a cluster, a container or another locale puts it: an output encoding that cannot
write every name, a home or cache folder it may not write into."""

from __future__ import annotations

import subprocess

import pytest
from process_helpers import child_env, vqkit_command


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_name_the_output_encoding_lacks_is_written_escaped(tmp_path, encoding):
    # Under PYTHONIOENCODING=ascii or a Latin-1 locale, `vqkit runs` over a folder named in
    # another script ended in a UnicodeEncodeError traceback (so did train printing its --out).
    folder = tmp_path / "runs-é中"
    folder.mkdir()
    env = child_env() | {"PYTHONIOENCODING": encoding}
    done = subprocess.run(
        vqkit_command("runs", str(folder)), env=env, capture_output=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, b"")
    # Escaped as Python escapes it: what the name is can still be read off.
    escaped = str(folder).encode(encoding, "backslashreplace")
    said = b"No run folders in '" + escaped + b"' (a run folder holds a config.json).\n"
    assert done.stdout == said
