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


def run_main(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m module args...` in this process: its exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [module, *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            ENTRY_POINTS[module]()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(sys.argv[:1] + [module, *args], code, stdout.getvalue(), stderr.getvalue())
