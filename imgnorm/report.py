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
