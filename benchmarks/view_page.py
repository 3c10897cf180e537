"""`dfer view` on big runs, before and after the paged page: time to write it, peak memory, size on disk, and the
time until headless Chromium shows the first cards.

    python benchmarks/view_page.py [--clips 2000,50000] [--before REF] [--thumb 80] [--repeats 3] [--keep DIR]

Makes four real clips (tests/media.py), runs the pipeline on them with a tiny random Qwen2-VL as captioner and
classifier, then synthesises runs of ``--clips`` clips that reuse those clips' cached artifacts (crops, keyframes,
motion summaries) with random head-biased scores (``tests.runs.scale_run``; 2 % of the clips failed at faces).
For each size, ``write_view`` runs in a child process once with the code of ``--before`` (default: main before
this work, one self-contained page) and once with this tree (a page and, above 2,000 clips, its cards in
``view_files/``), each child reporting its wall time and peak RSS. Then each page is opened in Debian's headless
Chromium: ``first cards`` is the time from navigation start until the script has rendered the summary and the
first cards (median of ``--repeats`` loads, at most ``--timeout`` seconds), ``sorted`` the same for the page
opened sorted by margin (``#sort=margin-asc``: the cards shown first are spread over the whole run).

The synthetic runs reuse four clips' artifacts, so the paged writer, which writes one thumbnail file per face
track and frame, encodes only a few thumbnails; the line ``thumbnail cost`` measures what one costs, to scale
to a run of distinct clips.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--child" not in sys.argv:  # a child imports the tree on its PYTHONPATH, not this one
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BEFORE = "4716adf"  # main when the paged page was written (issue 19): every run one self-contained page


def make_small_run(root: Path) -> Path:
    from tests import media
    from tests.runs import run
    from tests.tiny_models import tiny_model_dir

    clips = root / "clips"
    clips.mkdir()
    media.make_face_clip(clips / "a.mp4", motion="pan", seconds=2.0)
    media.make_face_clip(clips / "b.mp4", motion="static", seconds=3.0, expression=(1.9, 2.3))
    media.make_face_clip(clips / "c.mp4", motion="zoom", seconds=1.6, seed=1)
    media.make_face_clip(clips / "d.mp4", motion="pan_zoom", seconds=2.4, seed=2)
    (clips / "list.csv").write_text("path,label\na.mp4,happy\nb.mp4,surprise\nc.mp4,sad\nd.mp4,neutral\n")
    model = tiny_model_dir("qwen2vl", root / "models")
    res = run(clips / "list.csv", root / "run", root / "cache", f"context.model.model={model}",
              "context.model.max_new_tokens=8", f"classify.model.model={model}")
    if res.n_failed or res.status != "complete":
        raise SystemExit(f"the small run did not complete: {res.status}, {res.n_failed} failed")
    return root / "run"


def child(run_dir: str, page: str, thumb: int, warm_run: str) -> None:
    """Write the page with the tree on PYTHONPATH; print wall seconds and the peak RSS above what a process that
    has written the page of the 4-clip run holds (the libraries the view loads, torch among them: the same for both
    trees) as JSON."""
    from pipeline.view import write_view

    write_view(warm_run, Path(page).with_name("warm-up.html"), thumb_size=thumb)
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from here
    imported = _status_mb("VmRSS")
    t0 = time.perf_counter()
    write_view(run_dir, page, thumb_size=thumb)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": _status_mb("VmHWM") - imported}))


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/self/status")


def write_in(tree: Path, run_dir: Path, page: Path, thumb: int, warm_run: Path) -> dict:
    from benchmarks.baseline_tree import env_for

    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(run_dir), str(page), str(thumb),
                           str(warm_run)],
                          cwd=tree, env=env_for(tree), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"write_view with {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size_mb(page: Path) -> tuple[float, float]:
    folder = page.with_name(page.stem + "_files")
    files = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    return page.stat().st_size / 1e6, files / 1e6


def first_cards_ms(driver, url: str, repeats: int, timeout: float) -> float | None:
    """Median ms from navigation start until the first cards are shown; None when the page did not get there."""
    from tests.browser import console_errors, open_page

    ready = []
    for _ in range(repeats):
        try:
            open_page(driver, url, timeout=timeout)
        except Exception:  # noqa: BLE001 - a page too big to render (or a crashed tab) is a result here
            return None
        ready.append(float(driver.execute_script("return window.dferReadyMs")))
        errors = console_errors(driver)
        if errors:
            raise SystemExit(f"console errors on {url}: {errors[:3]}")
    return statistics.median(ready)


def thumbnail_cost(run_dir: Path, thumb: int, n: int = 200) -> float:
    """Milliseconds to read, resize and encode one thumbnail from a cached face track (what a run of distinct
    clips pays per thumbnail)."""
    from pipeline.engine.rundir import RunDir
    from pipeline.view.cards import jpegs
    from stages.faces.facetrack import FaceTrack

    run = RunDir(run_dir)
    row = run.manifest()[0]
    art = run.cache().get("faces", row.artifacts["faces"])
    t0 = time.perf_counter()
    for i in range(n // 4):
        jpegs(FaceTrack.load(art), [0, 1, 2, 3], thumb, 75)
    return (time.perf_counter() - t0) * 1000 / n


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default="2000,50000", help="run sizes, comma separated")
    ap.add_argument("--before", default=BEFORE, help="git revision of the code to compare with")
    ap.add_argument("--thumb", type=int, default=80, help="thumbnail size (pixels)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds a page may take to show its first cards")
    ap.add_argument("--keep", metavar="DIR", help="write the runs and pages here instead of a temporary folder")
    args = ap.parse_args(argv)

    from benchmarks.baseline_tree import unpack
    from tests.browser import start_browser
    from tests.runs import scale_run

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dfer-view-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    before, commit = unpack(args.before, root / "before-tree")
    after = Path(__file__).resolve().parents[1]
    small = make_small_run(root)
    print(f"before: {commit[:10]} ({before}); after: this tree ({after})")
    print(f"thumbnail cost: {thumbnail_cost(small, args.thumb):.2f} ms per {args.thumb} px thumbnail")
    driver = start_browser()
    rows = []
    try:
        for n in [int(x) for x in args.clips.split(",")]:
            big = scale_run(small, root / f"run-{n}", n)
            for name, tree in (("before", before), ("after", after)):
                page = root / f"view-{n}-{name}.html"
                w = write_in(tree, big, page, args.thumb, small)
                page_mb, files_mb = size_mb(page)
                ms = first_cards_ms(driver, page.resolve().as_uri(), args.repeats, args.timeout)
                sorted_ms = first_cards_ms(driver, page.resolve().as_uri() + "#sort=margin-asc", args.repeats,
                                           args.timeout) if ms is not None else None
                rows.append((n, name, w["seconds"], w["peak_mb"], page_mb, files_mb, ms, sorted_ms))
                print(f"  {n} clips, {name}: written in {w['seconds']:.1f} s", flush=True)
    finally:
        driver.quit()
    fmt = lambda v: "no render" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"\n{'clips':>6} {'code':>6} {'write s':>8} {'+peak MB':>8} {'page MB':>8} {'files MB':>9} "
          f"{'first cards ms':>15} {'sorted ms':>10}")
    for n, name, secs, peak, page_mb, files_mb, ms, sorted_ms in rows:
        print(f"{n:>6} {name:>6} {secs:>8.1f} {peak:>8.0f} {page_mb:>8.1f} {files_mb:>9.1f} {fmt(ms):>15} "
              f"{fmt(sorted_ms):>10}")
    print(f"pages in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
