#!/usr/bin/env python
"""Check that the artifacts of the code before a change and of the working tree are byte-identical where the
method did not change, on the test clips (``tests/media.py``).

1. **keyframes**: the keyframes stage of each tree on the *same* faces artifact (computed once by the code
   before), under its default config and each strategy: ``motion.npz`` and ``keyframes.json`` byte for byte.
2. **faces, old method**: the faces stage before (its defaults) against the working tree run with the old
   method: whole-frame detection on every ``detect_every``-th frame (``full_frame_every_s=0``), the old
   ``detect_every=5``, and MTCNN's networks in the default memory layout (the working tree switches them to
   channels-last on CPU, which moves boxes by < 1e-4 px). ``track.npz`` and the crops byte for byte: what the
   streaming rows, the region-only YUV->RGB conversion and the forgetting tracker must not change. One part of the
   method did change even there: the primary-face rule follows a face that moved fast (no overlap between two
   detections) where the code before lost it, so a clip with such a move differs; the frames that differ are
   printed (the tests' VFR fast pan at ``detect_every=5``: the frames after the move, which the code before
   cropped on a stale box and then marked missing).

``--defaults`` (the check of a change that keeps the method, e.g. issue 21's shots and identities on clips with one
face and no cut): both trees' faces stages with their default config, ``track.npz`` and the crops byte for byte, and
each tree's keyframes stage on its *own* faces artifact (a faces artifact of the working tree has files that the
keyframes stage reads and an older one lacks).

Each tree runs in its own child process (``PYTHONPATH``); the code before is ``git archive`` of ``--before``
(default: main before issue 15). Exit status 1 when anything differs.

    python scripts/same_artifacts.py [--before REF] [--defaults]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from baseline_tree import BEFORE, TreeProcess, unpack  # noqa: E402

KEYFRAME_CONFIGS = [{}, {"strategy": "uniform"}, {"strategy": "motion_apex", "k": 3}, {"strategy": "hybrid", "k": 6}]
OLD_METHOD = {"full_frame_every_s": 0, "detect_every": 5}


def child() -> None:
    """Runs a stage of the tree on ``PYTHONPATH`` for each JSON command on stdin; prints the artifact's folder."""
    import importlib

    try:
        from pipeline.core.cache import Artifact, Cache
        from pipeline.core.jobs import ClipJob
    except ImportError:  # a code tree from before the layer folders (pipeline/core/)
        from pipeline.cache import Artifact, Cache
        from pipeline.jobs import ClipJob

    loaded = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        mod = importlib.import_module(f"stages.{cmd['stage']}").STAGE
        cfg = mod.Config(**cmd["config"])
        key = (cmd["stage"], json.dumps(cmd["config"], sort_keys=True))
        if key not in loaded:
            res = mod.open(cfg)
            if cmd.get("default_layout") and res is not None:
                import torch

                for net in (res.pnet, res.rnet, res.onet):
                    net.to(memory_format=torch.contiguous_format)
            loaded[key] = res
        up = {"faces": Artifact("faces", Path(cmd["faces"]).name, Path(cmd["faces"]))} if cmd.get("faces") else {}
        job = ClipJob(Path(cmd["clip"]).name, Path(cmd["clip"]), "check", None, up)
        art = Cache(cmd["cache"]).write(cmd["stage"], uuid.uuid4().hex * 2, {}, lambda out: mod.process(job, cfg, loaded[key], out))
        print(json.dumps({"dir": str(art.root)}), flush=True)


def run(tree: TreeProcess, **cmd) -> Path:
    return Path(tree.ask(**cmd)["dir"])


def clips(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO))
    from tests import media

    specs = {
        "pan.mp4": dict(codec="h264", motion="pan", seconds=2.0),
        "zoom.webm": dict(codec="vp9", motion="zoom", seconds=1.6),
        "odd.avi": dict(codec="mpeg4", size=(321, 243), motion="static", seconds=1.2),
        "rotated.mp4": dict(rotation=90, size=(240, 320), motion="pan", seconds=1.2),
        "vfr.mp4": dict(vfr=True, motion="pan", seconds=1.6),
        "two.mp4": dict(faces=2, motion="static", seconds=1.2),
        "expr.mp4": dict(motion="static", seconds=3.0, expression=(1.9, 2.3)),
        "pan_zoom_720p.mp4": dict(size=(1280, 720), fps=30, motion="pan_zoom", seconds=4.0),
        "long_640x360.mp4": dict(size=(640, 360), fps=30, motion="pan_zoom", seconds=20.0),
    }
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, kw in specs.items():
        out[name] = folder / name
        media.make_face_clip(out[name], **kw)
    return out


def same(a: Path, b: Path, files: tuple[str, ...]) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def track_difference(a: Path, b: Path) -> str:
    """Where two faces artifacts differ: the frames whose box or presence differ, and the present frames of each."""
    import numpy as np

    ta, tb = np.load(a / "track.npz"), np.load(b / "track.npz")
    if len(ta["t"]) != len(tb["t"]):
        return f"frames {len(ta['t'])} before, {len(tb['t'])} after"
    box_a, box_b = ta["box"], tb["box"]
    differ = ~((box_a == box_b) | (np.isnan(box_a) & np.isnan(box_b))).all(axis=1) | (ta["present"] != tb["present"])
    rows = np.flatnonzero(differ)
    where = f"frames {rows[0]}-{rows[-1]} ({len(rows)} of {len(differ)})" if len(rows) else "no box differs (crops only)"
    return f"{where}; present frames before {int(ta['present'].sum())}, after {int(tb['present'].sum())}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--defaults", action="store_true", help="both trees with their default faces config, keyframes each on "
                    "its own faces artifact")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child()
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="dfer-same-"))
    trees = []
    try:
        before_dir, commit = unpack(args.before, tmp / "before")
        script = Path(__file__).resolve()
        before, after = TreeProcess(script, before_dir), TreeProcess(script, REPO)
        trees = [before, after]
        cache = str(tmp / "cache")
        rows, notes, ok = [], [], True
        for name, path in clips(tmp / "clips").items():
            faces_before = run(before, stage="faces", config={"device": "cpu"}, clip=str(path), cache=cache)
            if args.defaults:
                faces_old = run(after, stage="faces", config={"device": "cpu"}, clip=str(path), cache=cache)
            else:
                faces_old = run(after, stage="faces", config={"device": "cpu", **OLD_METHOD}, clip=str(path), cache=cache,
                                default_layout=True)
            f_same = same(faces_before, faces_old, ("track.npz", "crops.jpg.bin"))
            if not f_same:
                notes.append(f"{name}: faces differ: {track_difference(faces_before, faces_old)}")
            k_same = []
            for kcfg in KEYFRAME_CONFIGS:
                a = run(before, stage="keyframes", config=kcfg, clip=str(path), cache=cache, faces=str(faces_before))
                b = run(after, stage="keyframes", config=kcfg, clip=str(path), cache=cache,
                        faces=str(faces_old if args.defaults else faces_before))
                k_same.append(same(a, b, ("motion.npz", "keyframes.json")))
            ok = ok and f_same and all(k_same)
            rows.append((name, f_same, k_same))
        print(f"before = {commit[:12]} ({args.before}); after = working tree")
        where = "on each tree's own faces artifact" if args.defaults else "on the same faces artifact"
        print(f"{'clip':20s} {'faces, defaults' if args.defaults else 'faces, old method':>18s}   keyframes {where}: "
              + ", ".join(json.dumps(c) for c in KEYFRAME_CONFIGS))
        for name, f_same, k_same in rows:
            print(f"{name:20s} {'identical' if f_same else 'DIFFERENT':>18s}   "
                  + ", ".join("identical" if s else "DIFFERENT" for s in k_same))
        for note in notes:
            print(note)
        print("all identical" if ok else "SOME ARTIFACTS DIFFER")
        return 0 if ok else 1
    finally:
        for t in trees:
            t.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
