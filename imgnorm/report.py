"""Human-readable text for stats documents, sources and written HDF5 files."""

from __future__ import annotations

import os

from .outputs import human_bytes


def channel_names(color: str, channels: int) -> list[str]:
    if color == "rgb" and channels == 3:
        return ["R", "G", "B"]
    if channels == 1:
        return ["L" if color == "gray" else "c0"]
    return [f"c{i}" for i in range(channels)]


def _fmt(v, width: int = 12, digits: int = 6) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):>{width}d}"
    return f"{v:>{width}.{digits}f}"


def format_stats(doc: dict) -> str:
    """A table per split: images, pixels, global and per-channel statistics,
    then the exact percentiles, median, IQR and MAD (integer pixels).

    With a known ``max_value`` it adds mean and std on the 0-1 scale, the
    numbers torchvision's ``Normalize`` wants.
    """
    mv = doc.get("max_value")
    names = channel_names(doc.get("color", "keep"), doc["channels"])
    lines = [f"source: {doc['source']}",
             f"color: {doc['color']}  channels: {doc['channels']}  max value: {mv if mv else 'none (float)'}  "
             f"fit split: {doc['fit_split']}"]
    for name, s in doc["splits"].items():
        lines += ["", *_split_table(f"split {name}", s, names, mv)]
        for cls, sub in (s.get("classes") or {}).items():
            lines += ["", *_split_table(f"  split {name}, class {cls}", sub, names, mv)]
    if doc.get("skipped"):
        lines += ["", f"skipped {len(doc['skipped'])} unreadable image(s):"]
        lines += [f"  {s['file']}: {s['reason']}" for s in doc["skipped"]]
    return "\n".join(lines)


def _split_table(title: str, s: dict, names: list[str], mv) -> list[str]:
    shape = "x".join(str(d) for d in s["shape"]) if s["shape"] else "mixed sizes"
    head = f"  {'':8}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}"
    if mv:
        head += f"{'mean/' + str(mv):>12}{'std/' + str(mv):>12}"
    lines = [f"{title}: {s['images']:,} images, {s['pixels']:,} pixels per channel, shape {shape}", head]
    g, pc = s["global"], s["per_channel"]
    rows = [("global", g["mean"], g["std"], g["min"], g["max"])]
    rows += [(names[c], pc["mean"][c], pc["std"][c], pc["min"][c], pc["max"][c]) for c in range(len(names))]
    for label, mean, std, lo, hi in rows:
        line = f"  {label:8}{_fmt(mean)}{_fmt(std)}{_fmt(lo)}{_fmt(hi)}"
        if mv and mean is not None:
            line += f"{mean / mv:>12.6f}{std / mv:>12.6f}"
        lines.append(line)
    return lines + _percentile_table(s.get("percentiles"), names)


def _percentile_table(block: dict | None, names: list[str]) -> list[str]:
    """The exact percentiles (numpy's linear method), median, IQR and MAD."""
    if not block:
        return []
    if block.get("global") is None:
        return [f"  percentiles: none ({block.get('reason')})"]
    cols = [f"p{_q(q)}" for q in block["q"]] + ["median", "IQR", "MAD"]
    width = max(9, max(len(c) for c in cols) + 1)
    lines = [f"  {'':8}" + "".join(f"{c:>{width}}" for c in cols)]
    rows = [("global", block["global"])] + list(zip(names, block["per_channel"]))
    for label, r in rows:
        values = r["percentiles"] + [r["median"], r["iqr"], r["mad"]]
        lines.append(f"  {label:8}" + "".join(_fmt(v, width, 2) for v in values))
    return lines


def _q(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else f"{q:g}"


def format_plan(plan: dict) -> str:
    """What ``--dry-run`` prints: the outputs, splits, counts, shapes and sizes of a run not made."""
    lines = ["dry run: nothing was read or written"]
    if plan.get("output"):
        lines.append(f"output: {plan['output']}" + (f"  (at most {human_bytes(plan['max_bytes'])})"
                                                    if "max_bytes" in plan else ""))
    if plan.get("stats_out"):
        lines.append(f"stats document: {plan['stats_out']}")
    for name, s in plan["splits"].items():
        shape = f", stored as {'x'.join(map(str, s['shape']))} {plan['dtype']}" if "shape" in s else ""
        lines.append(f"split {name}: {s['images']:,} images{shape}")
    if "fits" in plan:
        fit = plan["fit_split"]
        lines.append(f"statistics: {'fitted on split ' + fit if plan['fits'] else 'given' if fit else 'per image'}"
                     + (f"; decoded pixels kept between passes: {human_bytes(plan['pixel_cache_bytes'])}"
                        if plan.get("pixel_cache_bytes") else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- inspect


def format_h5(info: dict) -> str:
    """The text of ``imgnorm inspect`` for an HDF5 file (facts from :func:`imgnorm.describe.describe_h5`)."""
    path, attrs, checks = info["path"], info["attrs"], info["check"]
    opts = attrs.get("options") or {}
    lines = [f"{'store' if info.get('format') == 'zarr' else 'file'}: {path}", f"written by imgnorm {attrs.get('imgnorm_version')} from {attrs.get('source')}",
             f"method: {attrs.get('method')}  options: "
             + ", ".join(f"{k}={v}" for k, v in opts.items()
                         if v not in (None, False) and k not in ("offset", "scale", "clip_lo", "clip_hi"))]
    if "offset" in opts:
        clip = f"clip x to [{_vec(opts['clip_lo'])}, {_vec(opts['clip_hi'])}], then " if "clip_lo" in opts else ""
        lines.append(f"applied: {clip}(x - {_vec(opts['offset'])}) / {_vec(opts['scale'])}"
                     + ("  then clip to [-1, 1] and (v + 1) / 2" if opts.get("clip_rescale") else ""))
    wh = info.get("whitening")
    if wh:
        lines.append(f"whitening: {wh['method']}, images {'x'.join(map(str, wh['image_shape']))}, matrix "
                     f"{'x'.join(map(str, wh['matrix_shape']))}; eigenvalues {wh['largest']:.6g} .. "
                     f"{wh['smallest']:.6g} ({wh['zero']} of {wh['eigenvalues']} zero); /whitening holds "
                     f"{', '.join(wh['datasets'])}")
    stats = attrs.get("stats") or {}
    fit = (stats.get("splits") or {}).get(stats.get("fit_split"), {})
    if fit.get("percentiles", {}).get("global"):
        names = channel_names(stats.get("color", "keep"), stats.get("channels", 1))
        lines += [f"pixel percentiles of the statistics applied (split {stats['fit_split']}):",
                  *_percentile_table(fit["percentiles"], names)]
    if attrs.get("class_names"):
        lines.append(f"classes ({len(attrs['class_names'])}): {', '.join(attrs['class_names'])}")
    if attrs.get("skipped"):
        lines.append(f"skipped images: {len(attrs['skipped'])}")
    if info.get("missing"):
        lines.append("INCOMPLETE: " + "; ".join(info["missing"]) + " (missing values read as NaN)")
    color = (attrs.get("stats") or {}).get("color", "keep")
    for name, s in info["splits"].items():
        where = f"virtual, joined from {s['parts']} part file(s) in {os.path.basename(path)}.parts/" \
            if "parts" in s else f"chunks {tuple(s['chunks'] or ())}  compression {s['compression']}"
        lines += ["", f"/{name}/x  shape {tuple(s['shape'])}  {s['dtype']}  {where}"]
        if "labels" in s:
            lines.append(f"/{name}/y  labels per class: {s['labels']['counts']}")
        if "files" in s:
            lines.append(f"/{name}/files  {s['files']} file names")
        c = checks[name]
        lines.append(f"  stored values{'':3}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}")
        pc = c["per_channel"]
        rows = [("global", c["global"])] + [
            (n, {k: pc[k][i] for k in ("mean", "std", "min", "max")})
            for i, n in enumerate(channel_names(color, len(pc["mean"])))]
        for label, v in rows:
            lines.append(f"  {label:16}{_fmt(v['mean'])}{_fmt(v['std'])}{_fmt(v['min'])}{_fmt(v['max'])}")
    return "\n".join(lines)


def _vec(v) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in v) + "]" if len(set(v)) > 1 else f"{v[0]:.6g}"


def format_source(doc: dict) -> str:
    """The text of ``imgnorm inspect`` for a source (facts from :func:`imgnorm.describe.describe_source`)."""
    lines = [f"source: {doc['path']} ({doc['kind']})",
             f"read as: {doc['color']}, {doc['channels']} channel(s), {doc['dtype']}"]
    if doc["class_names"]:
        lines.append(f"classes ({len(doc['class_names'])}): {', '.join(doc['class_names'])}")
    for name, e in doc["splits"].items():
        if "shape" in e:
            lines.append(f"split {name}: {e['images']} images of {'x'.join(map(str, e['shape']))} {doc['dtype']}"
                         + (", labelled" if e.get("labelled") else "")
                         + (f"; from {', '.join(e['read_from'])}" if e.get("read_from") else ""))
        else:
            size_text = (f"{e['distinct_sizes']} distinct size(s), smallest {e['smallest'][0]}x{e['smallest'][1]}, "
                         f"largest {e['largest'][0]}x{e['largest'][1]}" if e["smallest"] else "no readable image")
            extra = f"; {len(e['unreadable'])} unreadable" if e["unreadable"] else ""
            lines.append(f"split {name}: {e['images']} images; {size_text}; modes "
                         f"{', '.join(f'{m} {n}' for m, n in e['modes'].items())}{extra}")
            lines += [f"  unreadable {u['file']}: {u['reason']}" for u in e["unreadable"][:10]]
            if len(e["unreadable"]) > 10:
                lines.append(f"  ... and {len(e['unreadable']) - 10} more unreadable")
        if "per_class" in e:
            lines.append("  per class: " + ", ".join(f"{c} {n}" for c, n in e["per_class"].items()))
    lines.append(f"total: {doc['images']} images")
    for key, what in (("skipped", "skipped"), ("ignored", "ignored (hidden, not images, outside the layout)")):
        listed = doc[key]
        if listed["count"]:
            lines.append(f"{what}: {listed['count']}")
            lines += [f"  {e['file']}: {e['reason']}" for e in listed["first"]]
            if listed["count"] > len(listed["first"]):
                lines.append(f"  ... and {listed['count'] - len(listed['first'])} more")
    return "\n".join(lines)


PLOT_FORMATS = ("png", "svg", "pdf")
_PLOT_COLORS = {"R": "#dc322f", "G": "#3ca03c", "B": "#266ed2", "L": "#444444"}


def plot_format(path: str) -> str:
    """The picture format of ``--plot FILE``, from its extension (png, svg or pdf)."""
    from .errors import OptionError

    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if path == "-":
        return "png"
    if ext not in PLOT_FORMATS:
        raise OptionError(f"{path}: the picture format comes from the extension; use .png, .svg or .pdf",
                          option="--plot")
    return ext


def draw_histograms(info: dict, hist: dict, fmt: str = "png") -> bytes:
    """Histograms of the values stored in an HDF5 file: one panel per split, one
    line per channel. ``hist`` maps split names to ``(edges, counts)`` with
    edges (channels, n + 1) and counts (channels, n)."""
    color = (info["attrs"].get("stats") or {}).get("color", "keep")
    opts = info["attrs"].get("options") or {}
    panels = []
    for name in [n for n in info["splits"] if n in hist]:
        edges, counts = hist[name]
        c = info["check"][name]
        panels.append((f"/{name}/x: {info['splits'][name]['shape'][0]:,} images, mean {c['global']['mean']:.4g}, "
                       f"std {c['global']['std']:.4g}", edges, counts, channel_names(color, counts.shape[0]),
                       "stored value" + (" (one bin per pixel level)" if edges.shape[1] - 1 in (256, 65536) else "")))
    title = f"{info['path']}: {info['attrs'].get('method')}" + (f", {opts.get('dtype')}" if opts.get("dtype") else "")
    return _draw(panels, title, fmt)


def draw_document_histograms(doc: dict, path: str, fmt: str = "png") -> bytes:
    """The exact pixel histograms of a stats document: one panel per split."""
    import numpy as np

    from .stats import RunningStats, level_values

    panels = []
    for name, entry in doc["splits"].items():
        if entry.get("hist") is None:
            continue
        rs = RunningStats.from_dict(entry)
        values = level_values(rs.dtype)
        order = np.argsort(values, kind="stable")
        v = values[order].astype(np.float64)
        edges = np.tile(np.append(v - 0.5, v[-1] + 0.5), (rs.channels, 1))
        panels.append((f"split {name}: {entry['images']:,} images, mean {entry['global']['mean']:.4g}, "
                       f"std {entry['global']['std']:.4g}", edges, rs.hist_[:, order],
                       channel_names(doc.get("color", "keep"), rs.channels), "pixel value (one bin per level)"))
    if not panels:
        from .errors import OptionError
        raise OptionError(f"{path} holds no histograms (float pixels, or a version 1 document)", option="--plot")
    return _draw(panels, f"{path}: pixels of {doc['source']}", fmt)


def _draw(panels: list, title: str, fmt: str) -> bytes:
    """Step histograms with matplotlib (``imgnorm[plot]``), without pyplot: no
    global state, no display needed. ``panels``: (title, edges, counts, channel
    names, x label) each."""
    import io

    from .errors import MissingExtraError
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("--plot draws with matplotlib, which is not installed: pip install "
                                "'imgnorm[plot]'", option="--plot") from None
    fig = Figure(figsize=(8, 2.8 * max(1, len(panels))), layout="constrained")
    axes = fig.subplots(max(1, len(panels)), 1, squeeze=False)[:, 0]
    for ax, (name, edges, counts, labels, xlabel) in zip(axes, panels):
        for k, label in enumerate(labels):
            ax.stairs(counts[k], edges[k], label=label, color=_PLOT_COLORS.get(label), linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pixels")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.legend(title="channel", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    return buf.getvalue()
