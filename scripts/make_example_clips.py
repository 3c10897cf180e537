#!/usr/bin/env python
"""Write the small synthetic example clips in examples/clips/ and their labels.csv.

The clips are made by tests/media.py from scikit-image's astronaut photograph;
the label of every clip is what the photograph shows, happy (the astronaut
smiles), and the file names say what each clip exercises.  Output is
deterministic, so re-running it reproduces the committed files.

    python scripts/make_example_clips.py [--out examples/clips]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests import media  # noqa: E402

# (file name, label, make_face_clip keyword arguments)
EXAMPLES = [
    ("happy_pan.mp4", "happy", dict(codec="h264", motion="pan", seconds=2.0, seed=1)),
    ("happy_mouth_opening.mp4", "happy",
     dict(codec="h264", motion="static", seconds=3.0, expression=(1.0, 2.0), seed=2)),
    ("happy_portrait_rotated.mp4", "happy",
     dict(codec="h264", size=(240, 320), rotation=90, motion="pan_zoom", seconds=2.0, seed=3)),
    ("happy_zoom.webm", "happy", dict(codec="vp9", motion="zoom", seconds=2.5, seed=4)),
    ("happy_two_faces_vfr.mp4", "happy",
     dict(codec="h264", faces=2, motion="pan", vfr=True, seconds=2.0, seed=5)),
    ("happy_odd_size.avi", "happy",
     dict(codec="mpeg4", size=(321, 243), motion="static", seconds=2.0, seed=6)),
]


def make_examples(out_dir: Path) -> list[tuple[Path, str]]:
    """Write every example clip and ``labels.csv`` (paths relative to it) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, label, kwargs in EXAMPLES:
        spec = media.make_face_clip(out_dir / name, **kwargs)
        written.append((spec.path, label))
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows((path.name, label) for path, label in written)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "clips")
    args = parser.parse_args(argv)
    written = make_examples(args.out)
    for path, label in written:
        print(f"{path.stat().st_size / 1024:7.1f} KiB  {label:9s} {path}")
    total = sum(path.stat().st_size for path, _ in written)
    print(f"{total / 1024:7.1f} KiB  total, labels in {args.out / 'labels.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
