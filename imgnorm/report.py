"""Human-readable text for stats documents, sources and written HDF5 files."""

from __future__ import annotations


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
    """A table per split: images, pixels, global and per-channel statistics.

    With a known ``max_value`` it adds mean and std on the 0-1 scale, the
    numbers torchvision's ``Normalize`` wants.
    """
    mv = doc.get("max_value")
    names = channel_names(doc.get("color", "keep"), doc["channels"])
    lines = [f"source: {doc['source']}",
             f"color: {doc['color']}  channels: {doc['channels']}  max value: {mv if mv else 'none (float)'}  "
             f"fit split: {doc['fit_split']}"]
    head = f"  {'':8}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}"
    if mv:
        head += f"{'mean/' + str(mv):>12}{'std/' + str(mv):>12}"
    for name, s in doc["splits"].items():
        shape = "x".join(str(d) for d in s["shape"]) if s["shape"] else "mixed sizes"
        lines += ["", f"split {name}: {s['images']:,} images, {s['pixels']:,} pixels per channel, shape {shape}",
                  head]
        g, pc = s["global"], s["per_channel"]
        rows = [("global", g["mean"], g["std"], g["min"], g["max"])]
        rows += [(names[c], pc["mean"][c], pc["std"][c], pc["min"][c], pc["max"][c]) for c in range(len(names))]
        for label, mean, std, lo, hi in rows:
            line = f"  {label:8}{_fmt(mean)}{_fmt(std)}{_fmt(lo)}{_fmt(hi)}"
            if mv and mean is not None:
                line += f"{mean / mv:>12.6f}{std / mv:>12.6f}"
            lines.append(line)
    if doc.get("skipped"):
        lines += ["", f"skipped {len(doc['skipped'])} unreadable image(s):"]
        lines += [f"  {s['file']}: {s['reason']}" for s in doc["skipped"]]
    return "\n".join(lines)


def format_plan(plan: dict) -> str:
    """What ``--dry-run`` prints: the outputs, splits, counts, shapes and sizes of a run not made."""
    lines = ["dry run: nothing was read or written"]
    if plan.get("output"):
        lines.append(f"output: {plan['output']}" + (f"  (at most {_bytes(plan['max_bytes'])})"
                                                    if "max_bytes" in plan else ""))
    if plan.get("stats_out"):
        lines.append(f"stats document: {plan['stats_out']}")
    for name, s in plan["splits"].items():
        shape = f", stored as {'x'.join(map(str, s['shape']))} {plan['dtype']}" if "shape" in s else ""
        lines.append(f"split {name}: {s['images']:,} images{shape}")
    if "fits" in plan:
        fit = plan["fit_split"]
        lines.append(f"statistics: {'fitted on split ' + fit if plan['fits'] else 'given' if fit else 'per image'}"
                     + (f"; decoded pixels kept between passes: {_bytes(plan['pixel_cache_bytes'])}"
                        if plan.get("pixel_cache_bytes") else ""))
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------- inspect


def format_h5(info: dict) -> str:
    """The text of ``imgnorm inspect`` for an HDF5 file (facts from :func:`imgnorm.describe.describe_h5`)."""
    path, attrs, checks = info["path"], info["attrs"], info["check"]
    opts = attrs.get("options") or {}
    lines = [f"file: {path}", f"written by imgnorm {attrs.get('imgnorm_version')} from {attrs.get('source')}",
             f"method: {attrs.get('method')}  options: "
             + ", ".join(f"{k}={v}" for k, v in opts.items() if v not in (None, False) and k not in ("offset", "scale"))]
    if "offset" in opts:
        lines.append(f"applied: (x - {_vec(opts['offset'])}) / {_vec(opts['scale'])}"
                     + ("  then clip to [-1, 1] and (v + 1) / 2" if opts.get("clip_rescale") else ""))
    if attrs.get("class_names"):
        lines.append(f"classes ({len(attrs['class_names'])}): {', '.join(attrs['class_names'])}")
    if attrs.get("skipped"):
        lines.append(f"skipped images: {len(attrs['skipped'])}")
    color = (attrs.get("stats") or {}).get("color", "keep")
    for name, s in info["splits"].items():
        lines += ["", f"/{name}/x  shape {tuple(s['shape'])}  {s['dtype']}  chunks {tuple(s['chunks'] or ())}  "
                      f"compression {s['compression']}"]
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
                         + (", labelled" if e.get("labelled") else ""))
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
    """Histograms of the stored values: one panel per split, one line per channel.

    ``hist`` maps split names to ``(edges, counts)`` with edges (channels,
    n + 1) and counts (channels, n). Drawn with matplotlib (``imgnorm[plot]``),
    without pyplot: no global state, no display needed.
    """
    import io

    from .errors import OptionError
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionError("--plot draws with matplotlib, which is not installed: pip install 'imgnorm[plot]'",
                          option="--plot") from None
    names = [n for n in info["splits"] if n in hist]
    color = (info["attrs"].get("stats") or {}).get("color", "keep")
    opts = info["attrs"].get("options") or {}
    fig = Figure(figsize=(8, 2.8 * max(1, len(names))), layout="constrained")
    axes = fig.subplots(max(1, len(names)), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        edges, counts = hist[name]
        c = info["check"][name]
        for k, label in enumerate(channel_names(color, counts.shape[0])):
            ax.stairs(counts[k], edges[k], label=label, color=_PLOT_COLORS.get(label), linewidth=1.2)
        ax.set_title(f"/{name}/x: {info['splits'][name]['shape'][0]:,} images, mean {c['global']['mean']:.4g}, "
                     f"std {c['global']['std']:.4g}", fontsize=10)
        ax.set_xlabel("stored value" + (" (one bin per pixel level)" if edges.shape[1] - 1 in (256, 65536) else ""))
        ax.set_ylabel("pixels")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.legend(title="channel", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{info['path']}: {info['attrs'].get('method')}"
                 + (f", {opts.get('dtype')}" if opts.get("dtype") else ""), fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    return buf.getvalue()
