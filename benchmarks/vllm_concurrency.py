"""Requests in flight (``model.max_concurrency``) against a real vLLM server: clips/s of context and classify.

dfer runs its context and classify stages through the ``openai`` backend with 1, 2, 4 and 8 requests in flight,
side by side in one run, on synthetic face clips (tests/media.py; faces and keyframes computed once beforehand and
not timed). Each level gets clips of its own (new crops: no prefix-cache or image-cache hit carried over from
another level) and runs twice, the levels in one order and then in the reverse order; the figures are the medians.
Per level: context and classify clips/s (the runner's own stage times), their ratio to 1 request in flight, generate
requests/s, and vLLM's prefix-cache hit rate over the level's requests (its ``/metrics`` counters).

By default it starts the tests' vLLM CPU server (tests/servers.py: vLLM's CPU build from ``bash .ci/vllm-venv.sh``,
the tiny Qwen2-VL of tests/tiny_models.py, ``--max-num-seqs 8``). ``--server-url URL --model NAME`` measures a
server that runs already (e.g. ``vllm serve Qwen/Qwen2.5-VL-3B-Instruct`` on a GPU, docs/vllm.md).

Run: ``python benchmarks/vllm_concurrency.py`` (about 3 minutes on 2 cores). Absolute times on a shared machine mean
little; read the ratios, measured side by side.
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.engine.config import load_config  # noqa: E402
from pipeline.engine.runner import run_pipeline  # noqa: E402
from tests import media, servers  # noqa: E402
from tests.tiny_models import tiny_model_dir  # noqa: E402

LEVELS = (1, 2, 4, 8)
MOTIONS = ("pan", "static", "zoom", "pan_zoom")


def make_clips(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(n):
        motion = MOTIONS[i % len(MOTIONS)]
        media.make_face_clip(folder / f"c{i}.mp4", motion=motion, seconds=1.6, seed=seed + i,
                             expression=(0.4, 1.0) if motion == "static" else None)
        rows.append(f"c{i}.mp4,happy")
    (folder / "list.csv").write_text("\n".join(rows) + "\n")
    return folder / "list.csv"


def prefix_cache_counters(base_url: str) -> tuple[float, float] | None:
    """vLLM's ``prefix_cache_queries`` and ``prefix_cache_hits`` counters (tokens), or None without /metrics."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None

    def total(name: str) -> float:
        return sum(float(m) for m in re.findall(rf"^vllm:{name}_total{{[^}}]*}} ([0-9.e+]+)$", text, re.M))

    return total("prefix_cache_queries"), total("prefix_cache_hits")


def run(clips: Path, out: Path, cache: Path, *overrides: str, **kwargs):
    cfg = load_config(None, ["run.progress=false", "run.workers=1", *overrides])
    return run_pipeline(clips, out, cfg, cache_dir=cache, log=io.StringIO(), **kwargs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="clips per level and pass (default 8)")
    ap.add_argument("--server-url", help="a running server's root URL (without /v1); default: start the tests' vLLM")
    ap.add_argument("--model", help="the model that server serves (with --server-url)")
    ap.add_argument("--prompt-dir", help="context.prompt_dir: a prompt folder of your own (e.g. caption.j2 with its "
                    "instruction first, to see what the prefix cache makes of it)")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000,
                    help="the clips' seed (default: from the clock, so that a server that runs already has not seen them)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="requests in flight, comma-separated")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dfer-bench-vllm-concurrency-"))
    server = None
    if args.server_url:
        base, model = args.server_url.rstrip("/"), args.model
    else:
        model = tiny_model_dir("qwen2vl-vllm", root / "models")
        server = servers.start_vllm(model, root / "vllm.log")
        base = server.base_url
        print(f"vLLM CPU server ready after {server.startup_s:.0f} s (tiny Qwen2-VL, --max-num-seqs 8)")
    served = [f"{stage}.model.{k}={v}" for stage in ("context", "classify")
              for k, v in (("backend", "openai"), ("model", model), ("server_url", base + "/v1"))]
    if args.prompt_dir:
        served.append(f"context.prompt_dir={Path(args.prompt_dir).resolve()}")
    levels = tuple(int(n) for n in args.levels.split(","))
    try:
        order = [*levels, *levels[::-1]]
        base_seed = 1000 * args.seed
        inputs = [make_clips(root / f"in-{i}", args.clips, seed=base_seed + 100 * i) for i in range(len(order))]
        for i, clips in enumerate(inputs):  # faces and keyframes once, not timed
            run(clips, root / f"prep-{i}", root / "cache", until="keyframes")
        warm = make_clips(root / "in-warm", 2, seed=base_seed + 99)
        run(warm, root / "warm", root / "cache", *served, "context.model.max_concurrency=8",
            "classify.model.max_concurrency=8")  # the server's first requests are slower: not measured
        per: dict[int, dict[str, list[float]]] = {n: {"context": [], "classify": [], "captions": [], "hit": []}
                                                  for n in levels}
        for i, (n, clips) in enumerate(zip(order, inputs)):
            before = prefix_cache_counters(base)
            res = run(clips, root / f"run-{i}", root / "cache", *served, f"context.model.max_concurrency={n}",
                      f"classify.model.max_concurrency={n}", f"run.batch_size={max(8, n)}")
            after = prefix_cache_counters(base)
            assert res.status == "complete" and res.n_failed == 0, res.stop_message
            reports = {r.stage: r for r in res.reports}
            assert reports["context"].computed == reports["classify"].computed == args.clips
            n_captions = sum(len(g["windows"]) + (len(g["windows"]) > 1) for v in res.keys
                             for g in _context(res, v)["gaps"])
            per[n]["context"].append(args.clips / reports["context"].seconds)
            per[n]["classify"].append(args.clips / reports["classify"].seconds)
            per[n]["captions"].append(n_captions / reports["context"].seconds)
            if before and after and after[0] > before[0]:
                per[n]["hit"].append((after[1] - before[1]) / (after[0] - before[0]))
        med = {n: {k: statistics.median(v) if v else float("nan") for k, v in d.items()} for n, d in per.items()}
        print(f"{args.clips} clips per level and pass, 2 passes (levels {order}), seed {args.seed}; medians:")
        print("| requests in flight | context clips/s | x | generate requests/s | classify clips/s | x | prefix-cache hits |")
        print("|---|---|---|---|---|---|---|")
        for n in levels:
            m, one = med[n], med[levels[0]]
            print(f"| {n} | {m['context']:.2f} | {m['context'] / one['context']:.2f} | {m['captions']:.1f} | "
                  f"{m['classify']:.2f} | {m['classify'] / one['classify']:.2f} | {100 * m['hit']:.0f} % |")
    finally:
        if server is not None:
            server.stop()
    return 0


def _context(res, video: str) -> dict:
    from pipeline.engine.rundir import RunDir

    return RunDir(res.run_dir).cache().get("context", res.keys[video]["context"]).json("context.json")


if __name__ == "__main__":
    sys.exit(main())
