"""The ``imgnorm`` command (and ``python -m imgnorm``): the process around the Click app.

It owns what only a process can decide: the environment numpy starts in, the
standard streams, and the exit status. The status says whether the run's
outputs were committed: 0 they are in place, 1 bad data or a failed run
(nothing written), 2 wrong usage, 130 Ctrl-C, 128+N a signal N. Nothing the
streams do (a closed pipe, a full disk behind ``2>``, a closed descriptor)
turns a committed run into a failure or prints a traceback.
"""

from __future__ import annotations

import errno
import io
import os
import sys


def open_closed_std_fds() -> set[int]:
    """Point standard descriptors that were closed at start (``2>&-``) to /dev/null.

    Otherwise the first file the run opens would get descriptor 2, and
    anything written to stderr (a warning, a library's message) would land in
    the output. Returns the descriptors that were closed.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    if closed:
        for fd in sorted(closed):
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if 1 in closed or sys.stdout is None:
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        if 2 in closed or sys.stderr is None:
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    return closed


def _say(text: str) -> None:
    """A last line on stderr, if stderr takes it."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def run(argv: list[str] | None = None) -> int:
    """Run the Click app; return the exit status."""
    import click

    from .cli import CLOSED_STD_FDS, cli

    try:
        rv = cli.main(args=argv, prog_name="imgnorm", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        try:
            e.show()
        except (OSError, ValueError):  # stderr is full or closed: the status still says it
            pass
        return e.exit_code
    except (click.Abort, KeyboardInterrupt):
        _say("Aborted!")
        return 130
    except OSError as e:
        if e.errno == errno.EPIPE:  # the reader went away (`| head`): its choice, no message
            return 1
        _say(f"Error: {e}")
        return 1
    finally:
        CLOSED_STD_FDS.clear()


def main() -> None:
    """Run the command line, then end the process without the interpreter's teardown."""
    # Only whitening does linear algebra, and it asks for the cores when it
    # does (workers.blas_on_all_cores). OpenBLAS (loaded by numpy) otherwise
    # starts a thread per core that busy-waits after start-up, on the very
    # cores that inflate, decode and scale. Set before numpy is imported; a
    # user's setting wins.
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.environ["IMGNORM_BLAS_ONE_THREAD"] = "1"  # ours, not the user's: whitening may raise it
    from .workers import tune_malloc

    tune_malloc()
    closed = open_closed_std_fds()
    try:
        from . import cli as cli_module

        cli_module.CLOSED_STD_FDS.update(closed)
        code = run()
    except SystemExit as e:  # SIGTERM or SIGHUP while committing, or an exit from a library
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:  # Ctrl-C before Click took over (while importing)
        code = 130
    # By now every output file is closed and renamed into place (or removed)
    # and the worker processes are reaped; what is left is the interpreter
    # freeing numpy's and h5py's modules one object at a time (about 30 ms).
    # Flush what was printed and leave: after the exit handlers of
    # multiprocessing (when something used it) and of a Dask run, which
    # remove their temporary folders.
    for module, handler in (("multiprocessing.util", "_exit_function"), ("imgnorm.cluster", "remove_process_scratch")):
        if module in sys.modules:
            try:
                getattr(sys.modules[module], handler)()
            except Exception:  # a failed clean-up must not change the exit code
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # the reader went away, a full disk: said already
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
