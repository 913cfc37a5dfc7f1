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


_PLOT_COLORS = {"R": (220, 50, 47), "G": (60, 160, 60), "B": (38, 110, 210)}


def draw_histograms(info: dict, hist: dict) -> bytes:
    """A PNG with one panel per split: histograms of the stored values per channel.

    ``hist`` maps split names to ``(edges, counts)`` with counts (channels, bins).
    """
    import io

    from PIL import Image, ImageDraw

    W, H, pad = 760, 220, 50
    names = list(info["splits"])
    color = (info["attrs"].get("stats") or {}).get("color", "keep")
    img = Image.new("RGB", (W, H * len(names)), "white")
    d = ImageDraw.Draw(img)
    for row, name in enumerate(names):
        if name not in hist:
            continue
        c = info["check"][name]
        edges, counts = hist[name]
        lo, hi = c["global"]["min"], c["global"]["max"]
        ch, bins = counts.shape
        top = H * row
        x0, x1, y0, y1 = pad, W - 20, top + 30, top + H - 30
        d.text((pad, top + 8), f"/{name}/x  mean {c['global']['mean']:.4g}  std {c['global']['std']:.4g}",
               fill="black")
        d.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
        peak = max(int(counts.max()), 1)
        cn = channel_names(color, ch)
        for k in range(ch):
            col = _PLOT_COLORS.get(cn[k], (60, 60, 60))
            pts = [(x0 + (x1 - x0) * (i + 0.5) / bins, y1 - (y1 - y0) * counts[k, i] / peak) for i in range(bins)]
            d.line(pts, fill=col, width=2)
            d.text((x1 - 30 * (ch - k), top + 8), cn[k], fill=col)
        d.text((x0, y1 + 4), f"{lo:.4g}", fill="black")
        d.text((x1 - 40, y1 + 4), f"{hi:.4g}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
