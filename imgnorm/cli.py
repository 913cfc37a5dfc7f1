"""The ``imgnorm`` command: thin Click commands over the library.

Each command parses options, calls one library function and prints.  Library
errors become Click errors here: :class:`OptionError` exits 2 (wrong usage),
every other :class:`ImgnormError` exits 1 (bad data, failed run).
"""

from __future__ import annotations

import functools
import json
import signal
import sys

import click

from . import __version__
from .errors import ImgnormError, OptionError


def _on_sigterm(signum, frame):
    # Unwind like Ctrl-C so that temporary outputs are removed on the way out.
    raise SystemExit(128 + signum)


def translate_errors(fn):
    """Turn imgnorm's exceptions into one-line Click errors (tracebacks with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except OptionError as e:
            if debug:
                raise
            if e.option:
                raise click.BadParameter(str(e), ctx, param_hint=f"'{e.option}'") from None
            raise click.UsageError(str(e), ctx) from None
        except ImgnormError as e:
            if debug:
                raise
            raise click.ClickException(str(e)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            if debug:
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e}. This is a bug in imgnorm; re-run with "
                "`imgnorm --debug ...` and report the traceback") from None

    return wrapper


def _size(ctx, param, value):
    if value is None:
        return None
    from .decode import parse_size
    try:
        return parse_size(value)
    except OptionError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def read_options(fn):
    """Options of every command that reads a source."""
    for decorator in reversed([
        click.option("--color", type=click.Choice(["rgb", "gray", "keep"]), default=None,
                     help="Images: convert to RGB (default) or grayscale as Pillow does, or keep their "
                          "own channels. Arrays are read as stored."),
        click.option("--size", metavar="WxH", callback=_size,
                     help="Resize every image to WxH (JPEGs shrink through the decoder's draft mode)."),
        click.option("--split", "split", metavar="NAME", default=None, help="Only this split."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Decoding processes for image folders [default: all cores]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Images held in memory at once, per worker."),
        click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
                     help="On an unreadable image: stop, or leave it out and report it."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]):
        fn = decorator(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="imgnorm")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (for bug reports).")
def cli(debug):
    """Exact, streaming pixel statistics and normalization of image datasets.

    Reads folders of images (class subfolders, optional train/val/test split
    folders), .npz files in the Keras mnist.npz layout, .npy files and single
    images; writes statistics as JSON and scaled arrays as HDF5.

    \b
    Examples:
      imgnorm stats data/photos
      imgnorm standardize mnist.npz -o mnist.h5 --per-channel
      imgnorm inspect mnist.h5
    """
    signal.signal(signal.SIGTERM, _on_sigterm)


@cli.command()
@click.argument("source")
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print the stats document (JSON) instead of a table.")
@click.option("-o", "--output", metavar="FILE", help="Also write the stats document to FILE.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@translate_errors
def stats(source, color, size, split, workers, batch_size, on_error, quiet, as_json, output, force):
    """Count, min, max, mean and std of the pixels, global and per channel.

    \b
    Examples:
      imgnorm stats data/photos
      imgnorm stats mnist.npz --json > stats.json
      imgnorm stats data/photos --split train -o stats.json
    """
    from .outputs import check_output, write_json
    from .pipeline import compute_stats
    from .report import format_stats
    from .sources import open_source

    if output:
        check_output(output, force)
    src = open_source(source, color=color, size=size)
    doc = compute_stats(src, split=split, batch_size=batch_size, workers=workers, on_error=on_error,
                        show_progress=not quiet)
    _report_skipped(doc)
    if output:
        write_json(output, doc, force)
    click.echo(json.dumps(doc, indent=2) if as_json else format_stats(doc))


def _report_skipped(doc: dict):
    for s in doc.get("skipped", []):
        click.echo(f"skipped {s['file']}: {s['reason']}", err=True)


def main():  # pragma: no cover - console entry for `python -m`
    cli(prog_name="imgnorm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
