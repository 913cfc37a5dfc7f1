"""Side-by-side benchmarks: imgnorm against its peers, as whole processes, in turn.

Builds its own inputs in .bench/ (no downloads): an MNIST-shaped .npz and
folders of symlinked copies of the shared real photos. Each round runs
imgnorm and every peer once (alternating who goes first); the table gives the
median wall time, the median peak RSS (the whole process tree's, sampled every
5 ms from /proc in a thread) and the median of the per-round time ratios.

    python benchmarks/run.py --photos ../shared/data/photos [--rounds 3] [--only mnist,stats,resize,memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from datasets import make_cifar_like_npz, make_digits_npz, make_photo_copies, make_scans_npz  # noqa: E402

PY = sys.executable
# The installed console command, as users run it (`python -m imgnorm` from the
# repository root would import the source tree instead of the installed copy).
_SCRIPT = os.path.join(os.path.dirname(PY), "imgnorm")
IMGNORM = [_SCRIPT] if os.path.exists(_SCRIPT) else [PY, "-m", "imgnorm"]


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return total


def measure(cmd: list[str], cleanup: list[str] = ()) -> tuple[float, float, str]:
    """Run ``cmd``; return wall seconds, peak RSS in MiB and stdout.

    The wall time ends when waitpid() returns (no polling delay). Peak RSS is
    the whole process tree's resident memory summed, sampled every 5 ms from
    another thread. (Not the kernel's ru_maxrss: a child inherits the
    harness's own peak through fork and exec.)
    """
    import threading

    for path in cleanup:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    # Write the previous run's output back to disk now, so that its write-back
    # does not run (on these two cores) inside this run's time.
    os.sync()
    done = threading.Event()
    peak = [0]

    def sample(pid):
        while not done.wait(0.005):
            peak[0] = max(peak[0], tree_rss_kib(pid))

    import tempfile

    # Outputs go to files, not pipes: a document of 16-bit histograms is
    # bigger than a pipe's buffer and would block a child that nobody reads.
    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, cwd=ROOT)
        sampler = threading.Thread(target=sample, args=(proc.pid,), daemon=True)
        sampler.start()
        _, status = os.waitpid(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read().decode(), ferr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, peak[0] / 1024, out


def run_case(name: str, runs: dict[str, tuple[list[str], list[str]]], rounds: int) -> dict:
    """runs: label -> (command, files to delete before each run). The first label is imgnorm."""
    labels = list(runs)
    times = {k: [] for k in labels}
    rss = {k: [] for k in labels}
    outputs = {}
    for r in range(rounds):
        order = labels if r % 2 == 0 else labels[::-1]
        for label in order:
            wall, peak, out = measure(*runs[label])
            times[label].append(wall)
            rss[label].append(peak)
            outputs[label] = out
            print(f"  {name:8} round {r + 1}: {label:34} {wall:7.2f} s {peak:8.0f} MiB", flush=True)
    me = labels[0]
    rows = []
    for label in labels:
        ratios = [a / b for a, b in zip(times[me], times[label])]
        rows.append({"case": name, "run": label, "time_s": statistics.median(times[label]), "ratios": ratios,
                     "rss_mib": statistics.median(rss[label]),
                     "time_ratio": statistics.median(ratios) if label != me else None,
                     "rss_ratio": statistics.median(rss[me]) / statistics.median(rss[label]) if label != me else None})
    return {"rows": rows, "outputs": outputs}


def h5_max_diff(a: str, b: str) -> float:
    import h5py
    import numpy as np
    with h5py.File(a) as fa, h5py.File(b) as fb:
        return max(float(np.abs(fa[s]["x"][...].astype(np.float64) - fb[s]["x"][...].astype(np.float64)).max())
                   for s in ("train", "test") if s in fa and s in fb)


def h5_max_abs(a: str) -> float:
    import h5py
    import numpy as np
    with h5py.File(a) as fa:
        return max(float(np.abs(fa[s]["x"][...]).max()) for s in ("train", "test") if s in fa)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=os.path.join(ROOT, "..", "shared", "data", "photos"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--copies", type=int, default=10, help="photo copies in the 1x folder")
    ap.add_argument("--only", default="mnist,stats,percentiles,resize,memory,whiten,dask")
    ap.add_argument("--workdir", default=os.path.join(ROOT, ".bench"))
    a = ap.parse_args()
    only = set(a.only.split(","))
    w = a.workdir
    os.makedirs(w, exist_ok=True)
    workers = str(len(os.sched_getaffinity(0)))

    mnist = os.path.join(w, "mnist.npz")
    if not os.path.exists(mnist):
        print("making an MNIST-shaped .npz (60000 + 10000 drawn digits)...", flush=True)
        make_digits_npz(mnist)
    photos1 = make_photo_copies(a.photos, os.path.join(w, f"photos{a.copies}"), a.copies)
    photos10 = make_photo_copies(a.photos, os.path.join(w, f"photos{a.copies * 10}"), a.copies * 10)

    results, notes = [], []
    o = lambda name: os.path.join(w, name)  # noqa: E731
    if "mnist" in only:
        res = run_case("mnist", {
            "imgnorm standardize": (IMGNORM + ["standardize", mnist, "-o", o("i.h5"), "-q"], [o("i.h5")]),
            "numpy + h5py script": ([PY, f"{HERE}/peers/mnist_numpy.py", mnist, o("n.h5")], [o("n.h5")]),
            "Keras ImageDataGenerator": ([PY, f"{HERE}/peers/mnist_keras.py", mnist, o("k.h5")], [o("k.h5")]),
        }, a.rounds)
        results += res["rows"]
        notes.append(f"MNIST: max |imgnorm - numpy script| = {h5_max_diff(o('i.h5'), o('n.h5')):.3g}, "
                     f"max |imgnorm - Keras| = {h5_max_diff(o('i.h5'), o('k.h5')):.3g} (float32 outputs)")
    if "stats" in only:
        res = run_case("stats", {
            "imgnorm stats": (IMGNORM + ["stats", photos1, "--json", "-q"], []),
            "Pillow + numpy loop": ([PY, f"{HERE}/peers/folder_pillow_stats.py", photos1], []),
            f"decode only, imgnorm decoder, {workers} proc": (
                [PY, f"{HERE}/peers/folder_decode_only.py", photos1, workers, "imgnorm"], []),
            f"decode only, Pillow, {workers} proc": (
                [PY, f"{HERE}/peers/folder_decode_only.py", photos1, workers, "pillow"], []),
        }, a.rounds)
        results += res["rows"]
        mine = json.loads(res["outputs"]["imgnorm stats"])["splits"]
        peer = json.loads(res["outputs"]["Pillow + numpy loop"])
        worst = max(abs(mine[s]["per_channel"][k][c] - peer[s][k][c]) / abs(peer[s][k][c])
                    for s in peer for k in ("mean", "std") for c in range(3))
        notes.append(f"stats: largest relative difference from the Pillow loop's float64 sums: {worst:.2g}")
    if "percentiles" in only:
        scans = os.path.join(w, "scans16.npz")
        if not os.path.exists(scans):
            print("making a 16-bit scans .npz (1500 128x128 uint16)...", flush=True)
            make_scans_npz(scans)
        for label, data in (("MNIST", mnist), ("16-bit", scans)):
            res = run_case("pctl", {
                f"imgnorm stats, {label}": (IMGNORM + ["stats", data, "--json", "-q"], []),
                f"numpy percentile/median in memory, {label}": (
                    [PY, f"{HERE}/peers/percentiles_numpy.py", data], []),
            }, a.rounds)
            results += res["rows"]
            mine, peer = (json.loads(v) for v in res["outputs"].values())
            same = all(mine["splits"][s]["percentiles"]["global"] == peer[s] for s in peer)
            hist = max(len(json.dumps(e["hist"])) for e in mine["splits"].values())
            notes.append(f"percentiles, {label}: imgnorm's global percentiles, median, IQR and MAD "
                         f"{'equal' if same else 'DIFFER FROM'} numpy's; largest split histogram in the "
                         f"document: {hist / 1e3:.1f} kB")
    if "whiten" in only:
        cifar = os.path.join(w, "cifar_like.npz")
        if not os.path.exists(cifar):
            print("making a CIFAR-10-shaped .npz (50000 + 10000 32x32x3)...", flush=True)
            make_cifar_like_npz(cifar)
        for label, data, rounds in (("MNIST", mnist, a.rounds), ("CIFAR-shaped", cifar, max(1, a.rounds // 2))):
            res = run_case("whiten", {
                f"imgnorm whiten, {label}": (IMGNORM + ["whiten", data, "-o", o("w.h5"), "-q"], [o("w.h5")]),
                f"imgnorm whiten --precision float32, {label}": (
                    IMGNORM + ["whiten", data, "-o", o("w32.h5"), "-q", "--precision", "float32"], [o("w32.h5")]),
                f"keras-preprocessing zca fit + standardize, {label}": (
                    [PY, f"{HERE}/peers/whiten_keras.py", data, o("kw.h5")], [o("kw.h5")]),
            }, rounds)
            results += res["rows"]
            notes.append(f"whiten {label}: max |imgnorm - Keras| / max |imgnorm| = "
                         f"{h5_max_diff(o('w.h5'), o('kw.h5')) / h5_max_abs(o('w.h5')):.2g}; float32 product: "
                         f"{h5_max_diff(o('w.h5'), o('w32.h5')) / h5_max_abs(o('w.h5')):.2g}")
        out = subprocess.run([PY, f"{HERE}/whiten_error.py", mnist], capture_output=True, text=True, check=True)
        notes.append(f"whiten MNIST: {out.stdout.strip()}")
    if "dask" in only:
        # Dask against the built-in pool on the same cores, and Zarr's write time against HDF5's.
        outs = [o("d.h5"), o("d.h5.parts"), o("d.zarr")]
        for scale, folder in (("1x", photos1), ("10x", photos10)):
            for cmd in (["stats", "--json", "-q"], ["standardize", "--size", "64x64", "-q"]):
                args = [cmd[0], folder] + cmd[1:]
                writes = cmd[0] != "stats"
                h5 = ["-o", o("d.h5")] if writes else []
                runs = {f"{cmd[0]} {scale} pool": (IMGNORM + args + h5, outs)}
                for n in ("1", workers):
                    runs[f"{cmd[0]} {scale} local:{n}"] = (IMGNORM + args + h5 + ["--scheduler", f"local:{n}"], outs)
                if writes:
                    runs[f"{cmd[0]} {scale} pool -o .zarr"] = (IMGNORM + args + ["-o", o("d.zarr")], outs)
                    runs[f"{cmd[0]} {scale} local:{workers} -o .zarr"] = (
                        IMGNORM + args + ["-o", o("d.zarr"), "--scheduler", f"local:{workers}"], outs)
                res = run_case("dask", runs, max(1, a.rounds // 2))
                results += res["rows"]
                t = {r["run"]: r for r in res["rows"]}
                pool, one, many = (t[f"{cmd[0]} {scale} {k}"] for k in ("pool", "local:1", f"local:{workers}"))
                notes.append(f"dask {cmd[0]} {scale}: local:{workers} takes {many['time_s'] / pool['time_s']:.2f}x "
                             f"the pool's time and {many['rss_mib'] / pool['rss_mib']:.2f}x its peak memory; "
                             f"efficiency from 1 to {workers} workers "
                             f"{one['time_s'] / many['time_s'] / int(workers):.2f}")
                if writes:
                    z1, zn = t[f"{cmd[0]} {scale} pool -o .zarr"], t[f"{cmd[0]} {scale} local:{workers} -o .zarr"]
                    notes.append(f"zarr {cmd[0]} {scale}: -o .zarr takes {z1['time_s'] / pool['time_s']:.2f}x "
                                 f"the time of -o .h5 (pool), {zn['time_s'] / many['time_s']:.2f}x on "
                                 f"local:{workers} (workers write chunks / part files)")
        res = run_case("zarr", {"imgnorm standardize MNIST -o .h5": (IMGNORM + ["standardize", mnist, "-q", "-o",
                                                                              o("d.h5")], outs),
                                "imgnorm standardize MNIST -o .zarr": (IMGNORM + ["standardize", mnist, "-q", "-o",
                                                                                o("d.zarr")], outs)}, a.rounds)
        results += res["rows"]
        notes.append(f"zarr MNIST: -o .zarr takes {res['rows'][1]['time_s'] / res['rows'][0]['time_s']:.2f}x the time "
                     "of -o .h5")
        for path in outs:
            shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
    if "resize" in only:
        res = run_case("resize", {
            "imgnorm standardize --size 224x224": (
                IMGNORM + ["standardize", photos1, "--size", "224x224", "--per-channel", "-o", o("r.h5"), "-q"],
                [o("r.h5")]),
            "Pillow resize loop + h5py": (
                [PY, f"{HERE}/peers/folder_pillow_standardize.py", photos1, o("p.h5"), "224"], [o("p.h5")]),
            f"decode + resize only, imgnorm decoder, {workers} proc": (
                [PY, f"{HERE}/peers/folder_decode_only.py", photos1, workers, "imgnorm", "224x224"], []),
        }, a.rounds)
        results += res["rows"]
    if "memory" in only:
        for cmd, label in ((["stats", "--json", "-q"], "stats"),
                           (["standardize", "--size", "64x64", "-q", "--force", "-o", o("m.h5")], "standardize 64x64")):
            mem = {}
            for scale, folder in (("1x", photos1), ("10x", photos10)):
                args = IMGNORM + [cmd[0], folder] + cmd[1:]
                runs = [measure(args) for _ in range(max(1, a.rounds - 1))]
                mem[scale] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
                print(f"  memory  {label} {scale}: {mem[scale][0]:.2f} s {mem[scale][1]:.0f} MiB", flush=True)
            results.append({"case": "memory", "run": f"imgnorm {label}, 10x vs 1x data",
                            "time_s": mem["10x"][0], "rss_mib": mem["10x"][1],
                            "time_ratio": mem["10x"][0] / mem["1x"][0], "rss_ratio": mem["10x"][1] / mem["1x"][1]})
        if os.path.exists(o("m.h5")):
            os.remove(o("m.h5"))

    n1 = sum(1 for _ in _images(photos1))
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{_cpu_model()}; Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}",
             f"Inputs: MNIST-shaped .npz (60000 + 10000 28x28 uint8, savez_compressed); photo folder 1x = "
             f"{n1} JPEGs ({a.copies} symlinked copies of the 240 shared photos), 10x = {n1 * 10}.",
             "", "| case | run | median time | median peak RSS | imgnorm time / this | imgnorm RSS / this |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        tr = f"{r['time_ratio']:.2f}" if r["time_ratio"] is not None else ""
        rr = f"{r['rss_ratio']:.2f}" if r["rss_ratio"] is not None else ""
        lines.append(f"| {r['case']} | {r['run']} | {r['time_s']:.2f} s | {r['rss_mib']:.0f} MiB | {tr} | {rr} |")
    lines += ["", "(memory rows: the ratios are 10x run / 1x run.)", "", "Per-round time ratios (imgnorm / peer):", ""]
    lines += [f"- {r['case']}, {r['run']}: " + ", ".join(f"{x:.2f}" for x in r["ratios"])
              for r in results if r.get("ratios") and r["time_ratio"] is not None]
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(w, "results.md"), "w") as f:
        f.write(text + "\n")


def _images(root):
    for _, _, names in os.walk(root, followlinks=True):
        for n in names:
            if n.lower().endswith(".jpg"):
                yield n


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
