"""``imgnorm inspect``: the facts about an HDF5 output, a stats document or a
source, gathered by streaming (the values stored in an HDF5 file) or from
headers (a source: no pixel is decoded). :mod:`imgnorm.report` turns them
into text and pictures.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter

from .errors import ImageError, MissingExtraError, OptionError, SourceError, printable
from .outputs import OutputSet

HDF5_EXTENSIONS = (".h5", ".hdf5")
PLOT_BINS = 120


def inspect_path(path: str, *, color: str | None = None, plot: str | None = None, force: bool = False,
                 show_progress: bool = False, label: str | None = None, check: bool = False) -> tuple[str, dict]:
    """Describe ``path``: an imgnorm HDF5 file or Zarr store, a stats document or a source.

    Returns the text for a person and the same facts as a JSON-able dict;
    with ``plot``, also draws histograms of an output's stored values there.
    With ``check``, an output that misses data (a Zarr store's chunk) is a
    :class:`SourceError` listing what is missing.
    """
    from . import report
    from .outputs import is_zarr

    lower = path.lower()
    kind = "hdf5" if lower.endswith(HDF5_EXTENSIONS) or is_zarr(path) or os.path.isfile(
        os.path.join(path, "zarr.json")) else "stats" if lower.endswith(".json") else "source"
    if check and kind != "hdf5":
        raise OptionError("--check verifies a written HDF5 file or Zarr store", option="--check")
    if plot is not None and kind == "source":
        raise OptionError("--plot draws the values of an HDF5 file or the histograms of a stats document",
                          option="--plot")
    with OutputSet(force, inputs={"PATH": path}) as outputs:
        plot_out = outputs.add(plot, "--plot", what="the plot") if plot is not None else None
        fmt = report.plot_format(plot) if plot is not None else None
        if plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise MissingExtraError("--plot draws with matplotlib, which is not installed: pip install "
                                    "'imgnorm[plot]'", option="--plot")
        if kind == "hdf5":
            facts = describe_h5(path, show_progress=show_progress)
            text = report.format_h5(facts)
            if check and facts["missing"]:
                raise SourceError(f"{printable(path)} is incomplete: {'; '.join(facts['missing'])}; write it again")
            if plot_out is not None:
                from .pipeline import stored_histograms
                hist = stored_histograms(facts, PLOT_BINS, show_progress=show_progress)
                outputs.set_content(plot_out, report.draw_histograms(facts, hist, fmt))
                outputs.commit()
                text += f"\n\nhistograms: {plot}"
            return text, facts
        if kind == "stats":
            from .stats import read_stats_document
            doc = read_stats_document(path)
            text = report.format_stats(doc)
            if plot_out is not None:
                outputs.set_content(plot_out, report.draw_document_histograms(doc, path, fmt))
                outputs.commit()
                text += f"\n\nhistograms: {plot}"
            return text, doc
    if not os.path.exists(path):
        raise SourceError(f"{printable(path)}: no such file or folder")
    facts = describe_source(path, color=color, label=label)
    return report.format_source(facts), facts


def describe_h5(path: str, *, show_progress: bool = False) -> dict:
    """What :func:`imgnorm.store.read_h5_info` says, plus the statistics of the
    stored values per split (``check``), recomputed by streaming."""
    from .pipeline import stored_stats
    from .readback import check_output, read_output_info

    info = read_output_info(path)
    info["missing"] = check_output(info["path"])
    info["check"] = stored_stats(info, show_progress=show_progress)
    if info["attrs"].get("method") == "whiten" and info.get("format") != "zarr":
        info["whitening"] = _whitening_facts(path)
    return info


def _whitening_facts(path: str) -> dict | None:
    """The decomposition stored in ``/whitening``: its size and eigenvalue range."""
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        g = f.get("whitening")
        if not isinstance(g, h5py.Group) or "eigenvalues" not in g or "matrix" not in g:
            return None
        ev = g["eigenvalues"][...]
        return {"method": str(g.attrs.get("method", "")),
                "image_shape": [int(v) for v in g.attrs.get("image_shape", [])],
                "matrix_shape": list(g["matrix"].shape), "eigenvalues": int(ev.size),
                "largest": float(ev.max()) if ev.size else None, "smallest": float(ev.min()) if ev.size else None,
                "zero": int(np.count_nonzero(ev <= 1e-12 * max(float(ev.max()), 1e-300))) if ev.size else 0,
                "datasets": sorted(g)}


# How many entries of each kind a description lists by name before it only counts.
LIST_FIRST = 10


def describe_source(path: str, *, color: str | None = None, label: str | None = None) -> dict:
    """Images per split and class, sizes and modes from the headers, and what
    was left out (each entry, or the first ones and a count)."""
    from .sources import open_source

    src = open_source(path, color=color, on_error="skip", label=label)
    doc = {"path": path, "kind": src.kind, "color": src.color, "channels": src.channels,
           "dtype": str(src.dtype), "max_value": src.max_value, "class_names": src.class_names,
           "images": sum(len(s) for s in src.splits.values()), "splits": {},
           "skipped": _listed(src.skipped), "ignored": _listed(src.ignored),
           "skipped_files": len(src.skipped) + len(src.ignored)}
    for name, split in src.splits.items():
        entry = {"images": len(split)}
        if split.labels is not None and src.class_names:
            counts = Counter(int(v) for v in split.labels)
            entry["per_class"] = {c: counts.get(k, 0) for k, c in enumerate(src.class_names)}
        if split.files is not None:
            entry.update(_header_facts(split.files))
        else:
            entry["shape"] = list(split.shape)
            entry["labelled"] = split.labels is not None
            if getattr(split, "backing", None):  # CIFAR batches, IDX files
                entry["read_from"] = [printable(os.path.basename(f)) for f in split.backing]
        doc["splits"][name] = entry
    return doc


def _listed(items: list[tuple[str, str]]) -> dict:
    return {"count": len(items),
            "first": [{"file": printable(f), "reason": printable(r)} for f, r in items[:LIST_FIRST]]}


def _header_facts(files: list[str]) -> dict:
    from .decode import probe

    sizes, modes, unreadable = Counter(), Counter(), []
    for f in files:
        try:
            i = probe(f)
        except ImageError as e:
            unreadable.append({"file": printable(f), "reason": printable(e.reason)})
            continue
        sizes[(i.width, i.height)] += 1
        modes[i.mode] += 1
    by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    return {"distinct_sizes": len(sizes), "smallest": list(by_area[0]) if by_area else None,
            "largest": list(by_area[-1]) if by_area else None, "modes": dict(modes), "unreadable": unreadable}
