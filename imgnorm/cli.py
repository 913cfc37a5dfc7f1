"""The ``imgnorm`` command: thin Click commands over the library.

Each command parses options, calls one library function and prints.  Library
errors become Click errors here: :class:`OptionError` exits 2 (wrong usage),
every other :class:`ImgnormError` exits 1 (bad data, failed run).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import signal
import warnings

import click

from . import __version__
from .errors import ImgnormError, OptionError, printable


def _on_sigterm(signum, frame):
    # SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C, so that
    # temporary outputs are removed on the way out.
    raise SystemExit(128 + signum)


class UsageProblem(click.ClickException):
    """Wrong usage found by the library (an option's value, an output path):
    one line, exit code 2, like Click's own usage errors."""

    exit_code = 2


def translate_errors(fn):
    """Turn imgnorm's exceptions into one-line Click errors (tracebacks with --debug),
    and the library's warnings into ``warning:`` lines on stderr."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            with _warnings_to_stderr():
                return fn(*args, **kwargs)
        except OptionError as e:
            if debug:
                raise
            text = printable(str(e))
            if e.option and text.startswith(e.option + " "):  # "Invalid value for '--epsilon': must be ..."
                text = text[len(e.option) + 1:]
            raise UsageProblem(f"Invalid value for '{e.option}': {text}" if e.option else text) from None
        except ImgnormError as e:
            if debug:
                raise
            raise click.ClickException(printable(str(e))) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit,
                BrokenPipeError):
            raise  # a closed pipe: the reader's choice, the process ends quietly
        except Exception as e:
            if debug:
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {printable(str(e))}. This is a bug in imgnorm; re-run with "
                "`imgnorm --debug ...` and report the traceback") from None

    return wrapper


@contextlib.contextmanager
def _warnings_to_stderr():
    from .errors import ImgnormWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ImgnormWarning)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, ImgnormWarning):
                emit(f"warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


# File descriptors 0-2 that were closed when the process started (see __main__):
# they now point to /dev/null, and a result meant for a closed stdout is an error.
CLOSED_STD_FDS: set[int] = set()


def emit(text: str, err: bool = False, committed: bool = False) -> None:
    """Print a result (or, with ``err``, a note on stderr).

    Notes never fail a run, and neither does anything printed once the run's
    outputs are committed (``committed``): the exit status says whether they
    are in place. A result that cannot be printed is a one-line error; a
    closed pipe (``| head``) is the reader's choice, handled by the process.
    """
    try:
        if not err and 1 in CLOSED_STD_FDS:
            raise OSError(errno.EBADF, "it is closed")
        click.echo(printable(text), err=err)
    except BrokenPipeError:
        if err or committed:
            return
        raise
    except OSError as e:
        if err or committed:
            return
        raise click.ClickException(f"cannot write to standard output ({e.strerror or e}); check where it is "
                                   "redirected") from None


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
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Images held in memory at once, per worker [default: 64 images from a "
                          "folder of mixed sizes, else about 4 MiB of float32 output]."),
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
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_sigterm)


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
    from .pipeline import compute_stats
    from .report import format_stats
    from .sources import open_source

    src = open_source(source, color=color, size=size, on_error=on_error)
    doc = compute_stats(src, split=split, batch_size=batch_size, workers=workers, on_error=on_error,
                        show_progress=not quiet, output=output, force=force)
    _report_skipped(src, doc)
    emit(json.dumps(doc, indent=2) if as_json else format_stats(doc), committed=output is not None)


def _report_skipped(src, doc: dict):
    for s in doc.get("skipped", []):
        emit(f"skipped {src.reached_name(s['file'])}: {s['reason']}", err=True)


def write_options(fn):
    """Options of the three commands that write scaled HDF5."""
    for decorator in reversed([
        click.option("-o", "--output", metavar="OUT.h5", required=True, help="The HDF5 file to write."),
        click.option("--per-channel", is_flag=True, help="Per-channel statistics instead of global ones."),
        click.option("--per-image", is_flag=True,
                     help="Sample-wise: each image uses its own statistics (default: feature-wise, "
                          "the fit split's statistics for every split)."),
        click.option("--fit-split", metavar="NAME",
                     help="The split whose statistics are applied [default: train, else the only split]."),
        click.option("--stats", "stats_file", metavar="FILE|imagenet",
                     help="Apply a stats document from `imgnorm stats -o`, or ImageNet's RGB mean/std."),
        click.option("--max-value", type=click.FloatRange(min=0, min_open=True),
                     help="The pixel maximum, for float arrays [default: 255 for uint8, 65535 for uint16]."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "float64"]), default="float32",
                     show_default=True, help="Output type."),
        click.option("--layout", type=click.Choice(["nhwc", "nchw"]), default="nhwc", show_default=True,
                     help="nhwc for Keras, nchw for PyTorch."),
        click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none",
                     show_default=True, help="HDF5 filter; gzip is readable everywhere, lzf only by h5py."),
        click.option("--stats-out", metavar="FILE", help="Also write the stats document of the data."),
        click.option("--force", is_flag=True, help="Replace OUT.h5 (and --stats-out FILE) if they exist."),
    ]):
        fn = decorator(fn)
    return fn


def _run_transform(method, source, opts, **method_opts):
    from .pipeline import transform_to_hdf5
    from .sources import open_source
    from .stats import read_stats_document
    from .transforms import PRESETS, Scaler

    stats = opts.pop("stats_file")
    scaler = Scaler(method, per_channel=opts.pop("per_channel"), per_image=opts.pop("per_image"),
                    max_value=opts.pop("max_value"), **method_opts)
    if stats in PRESETS:
        scaler = Scaler.preset(stats, **scaler.get_params())
    elif stats is not None:
        scaler = Scaler.from_stats(read_stats_document(stats), **scaler.get_params())
    src = open_source(source, color=opts.pop("color"), size=opts.pop("size"), on_error=opts["on_error"])
    split = opts.pop("split")
    quiet = opts.pop("quiet")
    result = transform_to_hdf5(src, opts.pop("output"), scaler, splits=[split] if split else None,
                               show_progress=not quiet, inputs={"--stats": stats if stats not in PRESETS else None},
                               **opts)
    for w in result["warnings"]:
        emit(f"warning: {w}", err=True)
    _report_skipped(src, result["stats"])
    rows = ", ".join(f"{k} {v}" for k, v in result["rows"].items())
    if not quiet:
        emit(f"wrote {result['output']}: {rows} images ({method})", err=True)


@cli.command()
@click.argument("source")
@read_options
@write_options
@click.option("--minmax", is_flag=True, help="Map the fit split's min..max to 0..1 instead of dividing by the max.")
@translate_errors
def normalize(source, minmax, **opts):
    """Scale pixels to [0, 1]: x / max_value (255 for uint8), or min-max.

    \b
    Examples:
      imgnorm normalize mnist.npz -o mnist.h5
      imgnorm normalize data/photos --size 224x224 -o photos.h5 --layout nchw
    """
    _run_transform("normalize", source, opts, minmax=minmax)


@cli.command()
@click.argument("source")
@read_options
@write_options
@click.option("--unit", is_flag=True, help="Divide by max_value first: center on the 0-1 scale.")
@translate_errors
def center(source, unit, **opts):
    """Subtract the mean (of the fit split, or of each image with --per-image).

    \b
    Examples:
      imgnorm center mnist.npz -o mnist.h5 --unit
      imgnorm center data/photos --size 64x64 --per-channel -o photos.h5
    """
    _run_transform("center", source, opts, unit=unit)


@cli.command()
@click.argument("source")
@read_options
@write_options
@click.option("--clip-rescale", is_flag=True, help="Then clip to [-1, 1] and map to [0, 1] with (v + 1) / 2.")
@click.option("--epsilon", type=float, default=0.0, show_default=True,
              help="Add to the std (Keras' ImageDataGenerator adds 1e-6).")
@translate_errors
def standardize(source, clip_rescale, epsilon, **opts):
    """Subtract the mean and divide by the std (a zero std gets scale 1).

    \b
    Examples:
      imgnorm standardize mnist.npz -o mnist.h5
      imgnorm standardize data/photos --size 224x224 --per-channel -o photos.h5
      imgnorm standardize new_images/ --size 224x224 --stats train-stats.json -o new.h5
      imgnorm standardize data/photos --size 224x224 --stats imagenet -o photos.h5
    """
    _run_transform("standardize", source, opts, clip_rescale=clip_rescale, epsilon=epsilon)


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", metavar="FILE.png", help="Draw histograms of the stored values per split (HDF5 only).")
@click.option("--color", type=click.Choice(["rgb", "gray", "keep"]), default=None,
              help="For sources: how images would be read.")
@click.option("--force", is_flag=True, help="Replace FILE.png if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@translate_errors
def inspect(path, as_json, plot, color, force, quiet):
    """Describe an imgnorm HDF5 file, a stats document or a source.

    \b
    Examples:
      imgnorm inspect photos.h5
      imgnorm inspect photos.h5 --plot hist.png
      imgnorm inspect stats.json
      imgnorm inspect data/photos --json
    """
    from .describe import inspect_path

    text, doc = inspect_path(path, color=color, plot=plot, force=force, show_progress=not quiet)
    emit(json.dumps(doc, indent=2) if as_json else text, committed=plot is not None)
