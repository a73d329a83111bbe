"""Running ``kvpress-lab`` in-process and checking that a mistake is one line on stderr."""

from __future__ import annotations

from kvpress_lab.cli import main

__all__ = ["status_of", "one_line_error"]


def status_of(argv) -> int:
    """The exit status of ``kvpress-lab argv`` (argparse's ``SystemExit`` included)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_line_error(capsys, argv, status: int) -> str:
    """Run ``argv``; check the exit status and that stderr is exactly one error line; return it."""
    code = status_of(argv)
    err = capsys.readouterr().err
    assert code == status, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert err.startswith("kvpress-lab") and ": error: " in err and "Traceback" not in err, err
    return err
