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


def inspect_path(path: str, *, color: str | None = None, plot: str | None = None, force: bool = False,
                 show_progress: bool = False) -> tuple[str, dict]:
    """Describe ``path``: an imgnorm HDF5 file, a stats document or a source.

    Returns the text for a person and the same facts as a JSON-able dict.
    """
    import os

    from .errors import OptionError

    lower = path.lower()
    if lower.endswith((".h5", ".hdf5")):
        return inspect_h5(path, plot=plot, force=force, show_progress=show_progress)
    if plot:
        raise OptionError("--plot draws the values stored in an HDF5 file; give an .h5 file", option="--plot")
    if lower.endswith(".json"):
        from .stats import read_stats_document
        doc = read_stats_document(path)
        return format_stats(doc), doc
    if not os.path.exists(path):
        from .errors import SourceError
        raise SourceError(f"{path}: no such file or folder")
    return inspect_source(path, color=color)


def inspect_h5(path: str, *, plot: str | None = None, force: bool = False, show_progress: bool = False):
    import numpy as np

    from .pipeline import progress
    from .stats import RunningStats
    from .store import iter_stored, read_h5_info

    if plot:
        from .outputs import check_output
        check_output(plot, force)
    info = read_h5_info(path)
    attrs = info["attrs"]
    layout = (attrs.get("options") or {}).get("layout", "nhwc")
    checks = {}
    for name, s in info["splits"].items():
        channels = s["shape"][1] if layout == "nchw" else s["shape"][-1]
        rs = RunningStats(channels, np.float64)
        with progress(s["shape"][0], f"check {name}", show_progress) as bar:
            for block in iter_stored(path, name):
                block = block.transpose(0, 2, 3, 1) if layout == "nchw" else block
                rs.update(np.ascontiguousarray(block, dtype=np.float64))
                bar.update(len(block))
        checks[name] = rs.to_dict()
        checks[name].pop("sums")
        checks[name].pop("shape")
    info["check"] = checks
    lines = [f"file: {path}", f"written by imgnorm {attrs.get('imgnorm_version')} from {attrs.get('source')}",
             f"method: {attrs.get('method')}  options: "
             + ", ".join(f"{k}={v}" for k, v in (attrs.get("options") or {}).items()
                         if v not in (None, False) and k not in ("offset", "scale"))]
    opts = attrs.get("options") or {}
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
    if plot:
        draw_histograms(path, info, plot, layout, color)
        lines += ["", f"histograms: {plot}"]
    return "\n".join(lines), info


def _vec(v) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in v) + "]" if len(set(v)) > 1 else f"{v[0]:.6g}"


def inspect_source(path: str, *, color: str | None = None):
    from collections import Counter

    from .decode import probe
    from .errors import ImageError
    from .sources import open_source

    src = open_source(path, color=color)
    doc = {"path": path, "kind": src.kind, "color": src.color, "channels": src.channels,
           "dtype": str(src.dtype), "max_value": src.max_value, "class_names": src.class_names,
           "skipped_files": len(src.skipped), "splits": {}}
    lines = [f"source: {path} ({src.kind})", f"read as: {src.color}, {src.channels} channel(s), {src.dtype}"]
    if src.class_names:
        lines.append(f"classes ({len(src.class_names)}): {', '.join(src.class_names)}")
    for name, split in src.splits.items():
        entry = {"images": len(split)}
        if split.labels is not None and src.class_names:
            counts = Counter(int(v) for v in split.labels)
            entry["per_class"] = {c: counts.get(k, 0) for k, c in enumerate(src.class_names)}
        if split.files is not None:
            sizes, modes, unreadable = Counter(), Counter(), []
            for f in split.files:
                try:
                    i = probe(f)
                except ImageError as e:
                    unreadable.append({"file": f, "reason": e.reason})
                    continue
                sizes[(i.width, i.height)] += 1
                modes[i.mode] += 1
            by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
            entry.update({"distinct_sizes": len(sizes),
                          "smallest": list(by_area[0]) if by_area else None,
                          "largest": list(by_area[-1]) if by_area else None,
                          "modes": dict(modes), "unreadable": unreadable})
            size_text = (f"{len(sizes)} distinct size(s), smallest {by_area[0][0]}x{by_area[0][1]}, "
                         f"largest {by_area[-1][0]}x{by_area[-1][1]}" if by_area else "no readable image")
            extra = f"; {len(unreadable)} unreadable" if unreadable else ""
            lines.append(f"split {name}: {len(split)} images; {size_text}; modes "
                         f"{', '.join(f'{m} {n}' for m, n in modes.items())}{extra}")
        else:
            entry["shape"] = list(split.shape)
            lines.append(f"split {name}: {len(split)} images of {'x'.join(map(str, split.shape))} {src.dtype}"
                         + (", labelled" if split.labels is not None else ""))
        if "per_class" in entry:
            lines.append("  per class: " + ", ".join(f"{c} {n}" for c, n in entry["per_class"].items()))
        doc["splits"][name] = entry
    if src.skipped:
        lines.append(f"skipped {len(src.skipped)} file(s) that are not images or are hidden")
    return "\n".join(lines), doc


_PLOT_COLORS = {"R": (220, 50, 47), "G": (60, 160, 60), "B": (38, 110, 210)}


def draw_histograms(path: str, info: dict, out: str, layout: str, color: str) -> None:
    """A PNG with one panel per split: histograms of the stored values per channel."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .outputs import atomic_output
    from .store import iter_stored

    bins, W, H, pad = 120, 760, 220, 50
    names = list(info["splits"])
    img = Image.new("RGB", (W, H * len(names)), "white")
    d = ImageDraw.Draw(img)
    for row, name in enumerate(names):
        c = info["check"][name]
        lo, hi = c["global"]["min"], c["global"]["max"]
        if lo is None:
            continue
        if hi <= lo:
            hi = lo + 1
        ch = len(c["per_channel"]["mean"])
        hist = np.zeros((ch, bins), np.int64)
        for block in iter_stored(path, name):
            block = block.transpose(0, 2, 3, 1) if layout == "nchw" else block
            flat = block.reshape(-1, ch)
            for k in range(ch):
                hist[k] += np.histogram(flat[:, k], bins=bins, range=(lo, hi))[0]
        top = H * row
        x0, x1, y0, y1 = pad, W - 20, top + 30, top + H - 30
        d.text((pad, top + 8), f"/{name}/x  mean {c['global']['mean']:.4g}  std {c['global']['std']:.4g}",
               fill="black")
        d.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
        peak = max(int(hist.max()), 1)
        cn = channel_names(color, ch)
        for k in range(ch):
            col = _PLOT_COLORS.get(cn[k], (60, 60, 60))
            pts = [(x0 + (x1 - x0) * (i + 0.5) / bins, y1 - (y1 - y0) * hist[k, i] / peak) for i in range(bins)]
            d.line(pts, fill=col, width=2)
            d.text((x1 - 30 * (ch - k), top + 8), cn[k], fill=col)
        d.text((x0, y1 + 4), f"{lo:.4g}", fill="black")
        d.text((x1 - 40, y1 + 4), f"{hi:.4g}", fill="black")
    with atomic_output(out, force=True) as tmp:
        img.save(tmp, format="PNG")
