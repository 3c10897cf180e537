"""Cost of the expression stage as a share of the faces stage's, measured side by side on the same clips.

What is compared, in this one process, round by round (so the noise of a shared machine hits both alike):

(f) **faces stage** - ``stages.faces.STAGE.process`` as a runner worker calls it
    (``Cache.write("faces", key, meta, lambda out: faces.process(job, cfg, mtcnn, out))``, MTCNN loaded
    once beforehand, default config with ``device="cpu"``); the whole clip, artifact written.
(e) **expression stage** - ``stages.expression.process`` on the artifact (f) just wrote, the same way
    (model loaded once beforehand with ``stages.expression.open``, default config): every crop read
    from ``crops.jpg.bin`` and JPEG-decoded to grey, cut to the model's framing, preprocessed, scored in
    batches of 32, ``expression.npz`` written.

Clips (``tests/media.py``, the astronaut face on a textured background, H.264): 1280x720 at 30 fps
``pan_zoom`` (the faces benchmark's clip) and 320x240 at 25 fps ``pan`` (the size of the example clips).

Printed per clip: e/f (target <= 0.10), the median of the per-round ratios; both stages' ms per 100
frames; a breakdown of (e) from one more timed stage run per round (crop read + JPEG decode, framing +
preprocessing, forward passes, rest: artifact load and write); and (e) with the model as stored (BatchNorm
not folded, weights channels-first), to show what folding buys. The network costs 10.2 M multiply-adds a
frame (1 G per 100 frames), so one core cannot go much below a few tens of ms per 100 frames.

torch runs on ``--threads`` threads (default 1: one worker's share on a 2-core machine with the default
``run.workers=2``).

Run:  ``python benchmarks/expression_cost.py`` (about 1 min on 2 idle cores)
      ``python benchmarks/expression_cost.py --quick`` (3 s clips, 2 rounds)
Absolute times on a shared machine mean little; read the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import stages.expression as expression  # noqa: E402
from stages.faces import STAGE as faces  # noqa: E402
from pipeline.core.cache import Cache  # noqa: E402
from stages.faces.facetrack import FaceTrack  # noqa: E402
from pipeline.core.jobs import ClipJob  # noqa: E402
from pipeline.models import mini_xception  # noqa: E402
from pipeline.models.mini_xception import load_model  # noqa: E402
from tests.media import make_face_clip  # noqa: E402

pc = time.perf_counter
med = statistics.median

CLIPS = {
    "720p30_pan_zoom.mp4": dict(codec="h264", size=(1280, 720), fps=30, motion="pan_zoom"),
    "240p25_pan.mp4": dict(codec="h264", size=(320, 240), fps=25, motion="pan"),
}


def timed_write(cache: Cache, stage: str, fill, meta: dict | None = None) -> tuple[float, object]:
    t0 = pc()
    art = cache.write(stage, uuid.uuid4().hex * 2, meta or {}, fill)
    return pc() - t0, art


def run_faces(cache, job, cfg, mtcnn):
    # the runner records the stage's config in meta.json; the expression stage reads the crops' margin there
    return timed_write(cache, "faces", lambda out: faces.process(job, cfg, mtcnn, out), {"config": cfg.model_dump(mode="json")})


def run_expression(cache, job, faces_art, cfg, net):
    ejob = ClipJob(job.video_id, job.path, job.fingerprint, None, {"faces": faces_art})
    return timed_write(cache, "expression", lambda out: expression.process(ejob, cfg, net, out))


def timed_expression_run(cache, job, faces_art, cfg: expression.Config, net) -> dict[str, float]:
    """One real expression-stage run (the same call as (e)) with timers around the stage's own calls:
    ``FaceTrack.crops`` (read + JPEG decode), ``reframe`` + ``preprocess`` (framing + preprocessing) and
    the rest of ``predict_proba`` (forward passes). 'rest' is the run's total minus these (loading the
    faces artifact, writing the npz and meta.json, bookkeeping)."""
    t = dict.fromkeys(("read+decode", "framing+preprocess", "forward"), 0.0)

    def timed(name, fn):
        def wrapper(*a, **k):
            s = pc()
            try:
                return fn(*a, **k)
            finally:
                t[name] += pc() - s

        return wrapper

    class TimedTrack(FaceTrack):
        crops = timed("read+decode", FaceTrack.crops)

    class TimedNet:
        def predict_proba(self, crops, batch_size):
            s = pc()
            out = net.predict_proba(crops, batch_size=batch_size)
            t["forward"] += pc() - s
            return out

    orig = (expression.FaceTrack, expression.reframe, mini_xception.preprocess)
    prep = timed("framing+preprocess", orig[2])
    expression.FaceTrack, expression.reframe = TimedTrack, timed("framing+preprocess", orig[1])

    def preprocess_inside(*a, **k):  # preprocessing happens inside predict_proba: move it out of 'forward'
        s = pc()
        out = prep(*a, **k)
        t["forward"] -= pc() - s
        return out

    mini_xception.preprocess = preprocess_inside
    try:
        total, _ = run_expression(cache, job, faces_art, cfg, TimedNet())
    finally:
        expression.FaceTrack, expression.reframe, mini_xception.preprocess = orig
    t["rest"] = total - sum(t.values())
    t["total"] = total
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s clips, 2 rounds")
    ap.add_argument("--seconds", type=float, default=None, help="clip length (default 6; --quick 3)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 6.0)
    rounds = args.rounds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-expression-"))
    try:
        specs = {name: make_face_clip(tmp / name, seconds=seconds, **kw) for name, kw in CLIPS.items()}
        for name, spec in specs.items():
            print(f"clip {name}: {spec.width}x{spec.height} {spec.fps:g} fps, {seconds:g} s, {spec.n_frames} frames")
        print(f"torch {torch.__version__}, {args.threads} thread(s); {rounds} rounds")
        fcfg, ecfg = faces.Config(device="cpu"), expression.Config()
        mtcnn, net = faces.open(fcfg), expression.open(ecfg)
        stored = load_model(fused=False)
        cache = Cache(tmp / "cache")
        jobs = {name: ClipJob(name, spec.path, "bench") for name, spec in specs.items()}
        for name in specs:  # warm-up, excluded
            _, art = run_faces(cache, jobs[name], fcfg, mtcnn)
            run_expression(cache, jobs[name], art, ecfg, net)
            run_expression(cache, jobs[name], art, ecfg, stored)

        res = {name: {"f": [], "e": [], "e_stored": [], "ratio": [], "parts": []} for name in specs}
        for r in range(rounds):
            line = []
            for name, spec in specs.items():
                n = spec.n_frames
                dt_f, art = run_faces(cache, jobs[name], fcfg, mtcnn)
                dt_e, _ = run_expression(cache, jobs[name], art, ecfg, net)
                dt_s, _ = run_expression(cache, jobs[name], art, ecfg, stored)
                row = res[name]
                row["f"].append(dt_f / n * 1e5)
                row["e"].append(dt_e / n * 1e5)
                row["e_stored"].append(dt_s / n * 1e5)
                row["ratio"].append(dt_e / dt_f)
                row["parts"].append(timed_expression_run(cache, jobs[name], art, ecfg, net))
                line.append(f"{name}: f {dt_f / n * 1e5:.0f} ms/100 fr, e {dt_e / n * 1e5:.1f} ms/100 fr, e/f {dt_e / dt_f:.3f}")
                shutil.rmtree(cache.root / "faces", ignore_errors=True)
                shutil.rmtree(cache.root / "expression", ignore_errors=True)
            print(f"round {r + 1}/{rounds}: " + "  |  ".join(line), flush=True)

        print("\nresults (medians over rounds; ms per 100 frames)")
        for name, spec in specs.items():
            row = res[name]
            parts = {k: med(p[k] for p in row["parts"]) / spec.n_frames * 1e5 for k in row["parts"][0] if k != "total"}
            print(f"  {name}")
            print(f"    faces stage (f):       {med(row['f']):8.1f}")
            print(f"    expression stage (e):  {med(row['e']):8.1f}")
            print(f"    e/f:                   {med(row['ratio']):8.3f}   (target <= 0.10)")
            print("    (e) breakdown (one more timed run per round): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
            print(
                f"    (e) with the stored model (BatchNorm not folded, weights channels-first): {med(row['e_stored']):.1f} "
                f"-> folded is {med(s / e for s, e in zip(row['e_stored'], row['e'])):.2f}x faster"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
