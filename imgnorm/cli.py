"""The ``imgnorm`` command: thin Click commands over the library.

Each command parses options, calls one library function and prints.  Library
errors become Click errors here: :class:`OptionError` exits 2 (wrong usage),
every other :class:`ImgnormError` exits 1 (bad data, failed run).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import signal
import warnings

import click

from . import __version__
from .errors import ImgnormError, OptionError, printable


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
        raise click.BadParameter(str(e).removeprefix("--size "), ctx, param) from None


def _floats(ctx, param, value):
    """A comma list of numbers (--mean 0.485,0.456,0.406), or one for every channel."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of numbers, for example 0.485,0.456,0.406",
                                 ctx, param) from None


def _percentile_pair(ctx, param, value):
    """--clip-percentiles 0.5,99.5."""
    q = _percentile_list(ctx, param, value)
    if q is not None and (len(q) != 2 or not q[0] < q[1]):
        raise click.BadParameter(f"{value!r} is not LO,HI with LO < HI, for example 0.5,99.5", ctx, param)
    return q


def _percentile_list(ctx, param, value):
    """--percentiles 0.1,2.5,50: numbers of 0..100."""
    if value is None:
        return None
    try:
        q = [float(v) for v in value.split(",")]
    except ValueError:
        q = None
    if not q or any(not 0 <= v <= 100 for v in q):
        raise click.BadParameter(f"{value!r} is not a comma list of numbers of 0 to 100, for example 0.5,50,99.5",
                                 ctx, param)
    return q


def _options(*decorators):
    """Apply option decorators in the order written (as they read in --help)."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


CHOICES_RESIZE = ["stretch", "crop", "pad"]
CHOICES_INTERPOLATION = ["bilinear", "nearest", "bicubic", "lanczos", "box", "hamming"]

read_options = _options(
    click.option("--color", type=click.Choice(["rgb", "gray", "keep"]), default=None,
                 help="Images: convert to RGB (default) or grayscale as Pillow does, or keep their own "
                      "channels. Arrays are read as stored."),
    click.option("--size", metavar="WxH|S", callback=_size,
                 help="Bring every image to WxH (S: SxS) with Pillow's resize of the fully decoded image."),
    click.option("--resize-mode", type=click.Choice(CHOICES_RESIZE), default="stretch", show_default=True,
                 help="stretch to WxH; crop: cover it and cut the centre (torchvision Resize + CenterCrop); "
                      "pad: fit inside and pad (letterbox)."),
    click.option("--interpolation", type=click.Choice(CHOICES_INTERPOLATION), default="bilinear",
                 show_default=True, help="Pillow's resize filter (Keras' names; Keras defaults to nearest)."),
    click.option("--pad-value", type=click.IntRange(0, 65535), default=0, show_default=True,
                 help="The fill of --resize-mode pad, in pixel levels."),
    click.option("--draft", is_flag=True,
                 help="Shrink JPEGs in the decoder (libjpeg draft mode): faster, pixels slightly different."),
    click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True,
                 help="bgr for Caffe-style models: channels reversed, statistics follow them."),
    click.option("--split", "split", metavar="NAME", default=None, help="Only this split."),
    click.option("--label", type=click.Choice(["fine", "coarse"]), default=None,
                 help="CIFAR-100: its 100 fine classes (default) or 20 coarse superclasses."),
    click.option("--source-name", metavar="NAME",
                 help="Record the source as NAME in documents and outputs [default: its path as given]."),
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Decoding processes for image folders [default: all cores]."),
    click.option("--scheduler", metavar="ADDRESS", callback=lambda ctx, param, value: _prestart(value),
                 help="Run the reading tasks on Dask: local, local:N (a LocalCluster of N processes) or a "
                      "scheduler's address (tcp://host:8786). Needs imgnorm[dask]."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Images held in memory at once, per worker [default: 64 images from a folder of mixed "
                      "sizes, else about 4 MiB of float32 output]."),
    click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
                 help="On an unreadable image or folder: stop, or leave it out and report it."),
    click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), default="auto",
                 show_default=True, help="A bar on a terminal, a log line every few seconds elsewhere (auto)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress and no summary on stderr."),
    click.option("--dry-run", is_flag=True, help="Check the outputs and print the plan; read no pixel, write nothing."),
)


def _prestart(scheduler):
    """--scheduler local: the workers' forkserver starts now, importing beside this process."""
    if scheduler:
        from .cluster import prestart

        prestart(scheduler)
    return scheduler


def _open(source, opts: dict):
    """The source, as the read options say (they are removed from ``opts``)."""
    from .sources import open_source

    return open_source(source, color=opts.pop("color"), size=opts.pop("size"), resize_mode=opts.pop("resize_mode"),
                       interpolation=opts.pop("interpolation"), pad_value=opts.pop("pad_value"),
                       draft=opts.pop("draft"), channel_order=opts.pop("channel_order"), on_error=opts["on_error"],
                       name=opts.pop("source_name"), label=opts.pop("label"))


def _executor(src, opts: dict, show):
    """A Dask executor when ``--scheduler`` is given (removed from ``opts``), else None: the built-in pool."""
    scheduler = opts.pop("scheduler")
    if not scheduler:
        return None
    from .cluster import DaskExecutor

    return DaskExecutor(src, scheduler, show=show != "none")


def _show_progress(opts: dict):
    quiet, mode = opts.pop("quiet"), opts.pop("progress")
    return "none" if quiet else mode


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="imgnorm")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (for bug reports).")
def cli(debug):
    """Exact, streaming pixel statistics and normalization of image datasets.

    Reads folders of images (class subfolders, optional train/val/test split
    folders; 8 or 16 bits), .npz files in the Keras mnist.npz layout, .npy
    files, CIFAR-10/100 batches, IDX files (Fashion-MNIST) and single images;
    writes statistics as JSON and scaled (or whitened) arrays as HDF5 (or Zarr).

    Every option can also come from the environment: IMGNORM_<OPTION> for
    every command (IMGNORM_WORKERS=2), IMGNORM_<COMMAND>_<OPTION> for one.

    \b
    Examples:
      imgnorm stats data/photos
      imgnorm standardize mnist.npz -o mnist.h5 --per-channel
      imgnorm inspect mnist.h5
    """
    # SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C, so that
    # temporary outputs are removed on the way out; none of them lands in
    # the middle of a fork or of making a temporary file (see interrupts.py).
    from .interrupts import on_signal

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)


@cli.command(short_help="Count, min, max, mean, std and exact percentiles, global and per channel.")
@click.argument("source")
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print the stats document (JSON) instead of a table.")
@click.option("-o", "--output", metavar="FILE|-", help="Also write the stats document to FILE (- for stdout).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--percentiles", "q", callback=_percentile_list, metavar="Q[,Q...]",
              help="Which exact percentiles to report (0..100) [default: 0.5,1,5,25,50,75,95,99,99.5].")
@click.option("--per-class", is_flag=True, help="Also the statistics of each class within each split.")
@translate_errors
def stats(source, as_json, output, force, q, per_class, **opts):
    """Count, min, max, mean, std and exact percentiles of the pixels, global and per channel.

    \b
    Examples:
      imgnorm stats data/photos
      imgnorm stats mnist.npz --json > stats.json
      imgnorm stats data/photos --split train -o stats.json
    """
    from .pipeline import compute_stats
    from .report import format_plan, format_stats
    from .stats import document_json

    src = _open(source, opts)
    show = _show_progress(opts)
    doc = compute_stats(src, split=opts["split"], batch_size=opts["batch_size"], workers=opts["workers"],
                        on_error=opts["on_error"], show_progress=show, output=output, force=force,
                        dry_run=opts["dry_run"], percentiles=q, per_class=per_class,
                        executor=_executor(src, opts, show))
    if opts["dry_run"]:
        return emit(document_json(doc) if as_json else format_plan(doc))
    _report_skipped(src, doc)
    if output != "-":  # -o - printed the document already
        emit(document_json(doc) if as_json else format_stats(doc), committed=output is not None)


def _report_skipped(src, doc: dict):
    for s in doc.get("skipped", []):
        emit(f"skipped {src.reached_name(s['file'])}: {s['reason']}", err=True)


write_options = _options(
    click.option("-o", "--output", metavar="OUT.h5", required=True,
                 help="The HDF5 file to write; a name ending in .zarr writes a Zarr v3 store (imgnorm[zarr])."),
    click.option("--per-channel", is_flag=True, help="Per-channel statistics instead of global ones."),
    click.option("--per-image", is_flag=True,
                 help="Sample-wise: each image uses its own statistics (default: feature-wise, the fit split's "
                      "statistics for every split)."),
    click.option("--fit-split", metavar="NAME",
                 help="The split whose statistics are applied [default: train, else the only split]."),
    click.option("--stats", "stats_file", metavar="FILE|-|PRESET",
                 help="Apply a stats document (imgnorm stats -o; - reads stdin) or known constants: imagenet, "
                      "clip, inception ([-1, 1]), caffe (use with --channel-order bgr)."),
    click.option("--mean", callback=_floats, metavar="M[,M,M]",
                 help="Apply this mean (0-1 scale, RGB order, as torchvision's Normalize); with --std."),
    click.option("--std", callback=_floats, metavar="S[,S,S]", help="Apply this std (0-1 scale, RGB order)."),
    click.option("--clip-percentiles", callback=_percentile_pair, metavar="LO,HI",
                 help="Clip the pixels to the fit split's LO and HI percentiles first (exact; per channel with "
                      "--per-channel): normalize maps them to 0..1, center and standardize use the clipped "
                      "statistics. 8- and 16-bit pixels."),
    click.option("--force-stats", is_flag=True,
                 help="Apply --stats FILE even if its pixels were read otherwise (size, colour, resize...)."),
    click.option("--max-value", type=float,
                 help="The pixel maximum, for float arrays [default: 255 for uint8, 65535 for uint16]."),
    click.option("--dtype", type=click.Choice(["float32", "float16", "float64"]), default="float32",
                 show_default=True, help="Output type."),
    click.option("--layout", type=click.Choice(["nhwc", "nchw"]), default="nhwc", show_default=True,
                 help="nhwc for Keras, nchw for PyTorch."),
    click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True,
                 help="HDF5 filter; gzip is readable everywhere, lzf only by h5py."),
    click.option("--stats-out", metavar="FILE|-", help="Also write the stats document of the data read."),
    click.option("--force", is_flag=True, help="Replace OUT.h5 (and --stats-out FILE) if they exist."),
    click.option("--json", "as_json", is_flag=True, help="Print a summary of what was written (JSON) on stdout."),
)


def _scaler(method: str, opts: dict, method_opts: dict, channel_order: str):
    """The Scaler the options describe (they are removed from ``opts``)."""
    from .stats import read_stats_document
    from .transforms import PRESETS, Scaler

    stats, mean, std = opts.pop("stats_file"), opts.pop("mean"), opts.pop("std")
    scaler = Scaler(method, per_channel=opts.pop("per_channel"), per_image=opts.pop("per_image"),
                    max_value=opts.pop("max_value"), clip_percentiles=opts.pop("clip_percentiles"),
                    **method_opts)  # options checked before anything is read
    if (mean is None) != (std is None):
        raise OptionError("give --mean and --std together", option="--mean" if mean is None else "--std")
    if mean is not None and stats is not None:
        raise OptionError("--stats and --mean/--std both give statistics; choose one", option="--mean")
    params = scaler.get_params()
    if mean is not None:
        return Scaler.from_constants(mean, std, channel_order=channel_order, **params), None
    if stats in PRESETS:
        return Scaler.preset(stats, channel_order=channel_order, **params), None
    if stats is not None:
        return Scaler.from_stats(read_stats_document(stats), **params), stats
    return scaler, None


def _run_transform(method, source, opts, **method_opts):
    from .pipeline import transform_to_hdf5

    if opts["compression"] == "lzf":
        emit("warning: --compression lzf is read only by h5py (not by h5dump, PyTables, MATLAB or other HDF5 "
             "readers); gzip is read everywhere", err=True)
    scaler, stats_path = _scaler(method, opts, method_opts, opts["channel_order"])
    src = _open(source, opts)
    split, as_json, dry_run = opts.pop("split"), opts.pop("as_json"), opts.pop("dry_run")
    show = _show_progress(opts)
    result = transform_to_hdf5(src, opts.pop("output"), scaler, splits=[split] if split else None,
                               show_progress=show, inputs={"--stats": stats_path}, dry_run=dry_run,
                               executor=_executor(src, opts, show), **opts)
    _report_write(src, result, as_json=as_json, dry_run=dry_run, show=show,
                  summary=lambda: _summary(result, method), what=method)


def _report_write(src, result: dict, *, as_json: bool, dry_run: bool, show, summary, what: str) -> None:
    """What a write command prints: the plan (``--dry-run``), or its warnings, the
    images left out, and the ``--json`` summary (``summary()``) or a line on stderr."""
    from .report import format_plan
    from .stats import document_json

    if dry_run:
        return emit(document_json(result) if as_json else format_plan(result))
    for w in result["warnings"]:
        emit(f"warning: {w}", err=True)
    _report_skipped(src, result["stats"])
    if as_json:
        emit(document_json(summary()), committed=True)
    elif show != "none":
        rows = ", ".join(f"{k} {v}" for k, v in result["rows"].items())
        emit(f"wrote {result['output']}: {rows} images ({what})", err=True)


def _summary(result: dict, method: str) -> dict:
    """What a write command prints with --json."""
    opts = result["options"]
    return {"output": result["output"], "bytes": result["bytes"], "stats_out": result["stats_out"],
            "method": method, "splits": {n: {"images": result["rows"][n], "shape": result["shapes"][n]}
                                         for n in result["rows"]},
            "dtype": opts["dtype"], "layout": opts["layout"], "offset": opts.get("offset"),
            "scale": opts.get("scale"), "fit_split": opts["fit_split"], "skipped": len(result["skipped"]),
            "warnings": result["warnings"]}


@cli.command(short_help="Scale pixels to [0, 1]: x / max_value, or min-max.")
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
      imgnorm normalize data/photos --size 224 --resize-mode crop -o photos.h5 --layout nchw
    """
    _run_transform("normalize", source, opts, minmax=minmax)


@cli.command(short_help="Subtract the mean (of the fit split, or of each image).")
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
      imgnorm center data/photos --size 224 --stats caffe --channel-order bgr -o vgg.h5
    """
    _run_transform("center", source, opts, unit=unit)


@cli.command(short_help="Subtract the mean and divide by the std.")
@click.argument("source")
@read_options
@write_options
@click.option("--clip-rescale", is_flag=True, help="Then clip to [-1, 1] and map to [0, 1] with (v + 1) / 2.")
@click.option("--epsilon", type=float, default=0.0, show_default=True,
              help="Add to the std (Keras' ImageDataGenerator adds 1e-6).")
@click.option("--robust", is_flag=True,
              help="(x - median) / IQR, exact (scikit-learn's RobustScaler, quantile range 25-75).")
@translate_errors
def standardize(source, clip_rescale, epsilon, robust, **opts):
    """Subtract the mean and divide by the std (a zero std gets scale 1).

    \b
    Examples:
      imgnorm standardize mnist.npz -o mnist.h5
      imgnorm standardize data/photos --size 224x224 --per-channel -o photos.h5
      imgnorm standardize data/photos --size 224x224 -o photos.zarr
      imgnorm standardize new_images/ --size 224x224 --stats train-stats.json -o new.h5
      imgnorm standardize data/photos --size 224 --resize-mode crop --stats imagenet -o photos.h5
      imgnorm standardize data/photos --size 224 --mean 0.5 --std 0.5 -o photos.h5
      imgnorm standardize ct.npz --robust --clip-percentiles 0.5,99.5 -o ct.h5
    """
    _run_transform("standardize", source, opts, clip_rescale=clip_rescale, epsilon=epsilon, robust=robust)


@cli.command(short_help="ZCA or PCA whitening, fitted streaming on the fit split.")
@click.argument("source")
@read_options
@click.option("-o", "--output", metavar="OUT.h5", required=True, help="The HDF5 file to write.")
@click.option("--zca/--pca", "zca", default=True,
              help="ZCA (Keras' zca_whitening; images keep their shape) or PCA (a vector of components per "
                   "image)  [default: zca].")
@click.option("--epsilon", type=float, default=1e-6, show_default=True,
              help="Added to the eigenvalues (keras-preprocessing's zca_epsilon).")
@click.option("--keras", type=click.Choice(["2", "3"]), default="2", show_default=True,
              help="Where epsilon goes: Keras 2 / keras-preprocessing (1/sqrt(s + eps)) or Keras 3 "
                   "(1/(sqrt(s) + eps/sqrt(N)), at most N components).")
@click.option("--standardize", is_flag=True, help="Divide by the per-channel std after centring, before whitening.")
@click.option("--components", type=click.IntRange(min=1), metavar="K",
              help="PCA: keep the K components of largest variance [default: all].")
@click.option("--unit", is_flag=True, help="Whiten x / max_value (Keras' rescale=1/255) instead of pixel levels.")
@click.option("--precision", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Arithmetic of the whitening product: float32 (Keras' own) is ~2x faster, ~1e-6 relative "
                   "off; the fit's sums are exact either way.")
@click.option("--fit-split", metavar="NAME", help="The split fitted on [default: train, else the only split].")
@click.option("--fit", "fit_file", metavar="FILE.npz", help="Apply a saved whitening (--stats-out) instead of fitting.")
@click.option("--force-stats", is_flag=True, help="Apply --fit FILE even if its pixels were read otherwise.")
@click.option("--max-value", type=float, help="The pixel maximum, for float arrays with --unit.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "float64"]), default="float32",
              show_default=True, help="Output type.")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]), default="nhwc", show_default=True,
              help="nhwc for Keras, nchw for PyTorch (ZCA).")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True,
              help="HDF5 filter; gzip is readable everywhere, lzf only by h5py.")
@click.option("--stats-out", metavar="FILE.npz", help="Also write the fit (sums and decomposition) for --fit.")
@click.option("--force", is_flag=True, help="Replace OUT.h5 (and --stats-out FILE) if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary of what was written (JSON) on stdout.")
@translate_errors
def whiten(source, zca, epsilon, keras, standardize, components, unit, precision, fit_file, **opts):
    """ZCA or PCA whitening: fitted on the fit split in one streaming float64
    pass (exact sums for 8-bit pixels), applied to every split.

    Keras' ImageDataGenerator(zca_whitening=True) needs the whole training set
    in memory as float32; imgnorm streams. The D x D matrix (D = H x W x C)
    must fit: use --size or --color gray for large images.

    \b
    Examples:
      imgnorm whiten mnist.npz -o mnist-zca.h5
      imgnorm whiten cifar-10-batches-py -o cifar-zca.h5 --stats-out zca.npz
      imgnorm whiten new_images/ --size 32 --fit zca.npz -o new.h5
      imgnorm whiten data/photos --size 32 --pca --components 100 -o pca.h5
    """
    from .whiten import Whitener, whiten_to_hdf5

    whitener = None
    if fit_file is None:
        whitener = Whitener("zca" if zca else "pca", epsilon=epsilon, keras=int(keras), standardize=standardize,
                            components=components, unit=unit, precision=precision)
    src = _open(source, opts)
    split, as_json, dry_run = opts.pop("split"), opts.pop("as_json"), opts.pop("dry_run")
    show = _show_progress(opts)
    result = whiten_to_hdf5(src, opts.pop("output"), whitener, fit=fit_file, splits=[split] if split else None,
                            show_progress=show, dry_run=dry_run, executor=_executor(src, opts, show), **opts)
    _report_write(src, result, as_json=as_json, dry_run=dry_run, show=show, summary=lambda: _whiten_summary(result),
                  what=f"{result.get('options', {}).get('method')} whitening")


def _whiten_summary(result: dict) -> dict:
    """What ``whiten`` prints with --json."""
    o = result["options"]
    return {"output": result["output"], "bytes": result["bytes"], "stats_out": result["stats_out"],
            "method": "whiten", "whitening": o["method"], "epsilon": o["epsilon"], "keras": o["keras"],
            "fit_split": o["fit_split"], "fitted_on": o["fitted_on"],
            "splits": {n: {"images": result["rows"][n], "shape": result["shapes"][n]} for n in result["rows"]},
            "dtype": o["dtype"], "skipped": len(result["skipped"]), "warnings": result["warnings"]}


@cli.command(short_help="Describe an imgnorm HDF5 file or Zarr store, a stats document or a source.")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", metavar="FILE.png", help="Draw histograms of the stored values per split (HDF5 only).")
@click.option("--color", type=click.Choice(["rgb", "gray", "keep"]), default=None,
              help="For sources: how images would be read.")
@click.option("--label", type=click.Choice(["fine", "coarse"]), default=None,
              help="CIFAR-100: count its fine (default) or coarse classes.")
@click.option("--check", is_flag=True,
              help="Fail (exit 1) if a written output is incomplete (a Zarr store missing a chunk).")
@click.option("--force", is_flag=True, help="Replace FILE.png if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@translate_errors
def inspect(path, as_json, plot, color, label, check, force, quiet):
    """Describe an imgnorm HDF5 file or Zarr store, a stats document or a source.

    \b
    Examples:
      imgnorm inspect photos.h5
      imgnorm inspect photos.h5 --plot hist.png
      imgnorm inspect photos.zarr --check
      imgnorm inspect stats.json
      imgnorm inspect data/photos --json
      imgnorm inspect cifar-100-python --label coarse
    """
    from .describe import inspect_path
    from .stats import document_json

    text, doc = inspect_path(path, color=color, label=label, plot=plot, force=force, show_progress=not quiet,
                             check=check)
    emit(document_json(doc) if as_json else text, committed=plot is not None)


def _environment_variables(group: click.Group) -> None:
    """Every option can come from IMGNORM_<OPTION>, or IMGNORM_<COMMAND>_<OPTION> for one command."""
    for command in [group, *group.commands.values()]:
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar is None and not param.is_eager:
                name = max(param.opts, key=len).lstrip("-").replace("-", "_").upper()
                own = [f"IMGNORM_{command.name.upper()}_{name}"] if command is not group else []
                param.envvar = own + [f"IMGNORM_{name}"]


_environment_variables(cli)
