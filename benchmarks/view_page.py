"""`dfer view` on a large run: page size, time to write it, time to open it in headless Chromium.

    python benchmarks/view_page.py [--clips 2000] [--thumbs 64,80,96] [--repeats 3] [--keep DIR]

Makes four real clips (tests/media.py), runs the pipeline on them with a tiny random Qwen2-VL as
captioner and classifier, then synthesises a run of ``--clips`` clips that reuse those clips' cached
artifacts (crops, keyframes, motion summaries) with random head-biased scores (``tests.runs.scale_run``;
2 % of the clips failed at faces). For each thumbnail size it prints the page size, the time
``write_view`` took, and the time from navigation start until the page's script has rendered the
summary and the first cards in Debian's headless Chromium (median of ``--repeats`` loads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def open_ms(driver, page: Path, repeats: int) -> tuple[float, float]:
    """Median (script-ready ms after navigation start, wall seconds of the whole load)."""
    from tests.browser import console_errors, open_page

    ready, wall = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        open_page(driver, page, timeout=120)
        wall.append(time.perf_counter() - t0)
        ready.append(float(driver.execute_script("return window.dferReadyMs")))
        errors = console_errors(driver)
        if errors:
            raise SystemExit(f"console errors on {page}: {errors[:3]}")
    return statistics.median(ready), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--thumbs", default="64,80,96", help="thumbnail sizes to compare (pixels)")
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="write the runs and pages here instead of a temporary folder")
    args = ap.parse_args(argv)

    from pipeline.view import write_view
    from tests.browser import start_browser
    from tests.runs import scale_run

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dfer-view-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    small = make_small_run(root)
    big = scale_run(small, root / f"run-{args.clips}", args.clips)
    print(f"small run (4 clips) and a synthetic run of {args.clips} clips made in {time.perf_counter() - t0:.1f} s")
    driver = start_browser()
    try:
        print(f"{'thumb px':>8} {'page MB':>8} {'write s':>8} {'ready ms':>9} {'load s':>7}")
        for size in [int(x) for x in args.thumbs.split(",")]:
            t0 = time.perf_counter()
            page = write_view(big, root / f"view-{args.clips}-{size}px.html", thumb_size=size, quality=args.quality)
            write_s = time.perf_counter() - t0
            ready, wall = open_ms(driver, page, args.repeats)
            print(f"{size:>8} {page.stat().st_size / 1e6:>8.1f} {write_s:>8.1f} {ready:>9.0f} {wall:>7.2f}")
    finally:
        driver.quit()
    print(f"pages in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
