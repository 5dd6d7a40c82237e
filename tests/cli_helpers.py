"""How a refused command must look: exit status 2 and one 'vqkit: error:' sentence."""

from __future__ import annotations

import pytest

from vqkit.cli import main


def fails_cleanly(capsys, argv: list, *fragments: str) -> str:
    """Run the CLI; assert exit 2 and a single 'vqkit: error:' sentence holding ``fragments``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("vqkit: error: ") and "\n" not in err, err
    assert "Traceback" not in err and err.endswith("."), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def refused_by_parser(capsys, argv: list, fragment: str) -> str:
    """argparse's refusal: exit status 2 and one error line holding ``fragment``."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert "Traceback" not in err and "\n" not in err and fragment in err, err
    return err
