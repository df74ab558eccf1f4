"""The project's command lines, run in this process: the entry point its console script calls, with
sys.argv as the shell would give it, returning the exit code and what it printed. A new interpreter
spends seconds importing torch, transformers and hydra on every call; the tests that need one (a
signal, another environment, the installed script itself) still start one."""
import contextlib
import io
import subprocess
import sys

import bidir.compare
import bidir.evaluate
import bidir.teacher_cli
import bidir.trace
import bidir.train

ENTRY_POINTS = {"bidir.train": bidir.train.main, "bidir.evaluate": bidir.evaluate.main,
                "bidir.trace": bidir.trace.main, "bidir.teacher_cli": bidir.teacher_cli.main,
                "bidir.compare": bidir.compare.main}


def run_main(entry, *args, prog: str | None = None) -> subprocess.CompletedProcess:
    """`python -m entry args...` in this process: its exit code, stdout and stderr. `entry` is a
    module of ENTRY_POINTS, or a script's main (its return value is the exit code) named `prog`."""
    main = ENTRY_POINTS[entry] if isinstance(entry, str) else entry
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [prog or entry, *map(str, args)]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main() or 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess([prog or entry, *args], code, stdout.getvalue(), stderr.getvalue())
