"""Training data for ``dfer finetune``: labels, the validation split, upstream artifacts, rendered prompts.

1. :func:`collect_labels` reads the training labels (a label file, or the ``label`` column of a CSV list) and
   resolves them through the classify label set: a label outside it is an error naming the file and line.
2. :func:`split_train_val` holds out validation clips by video id: a given ``--val-labels`` file, or the
   toolkit's stratified split (:mod:`pipeline.training.split`). :func:`check_training_set` refuses a training set with fewer than two classes.
3. :func:`prepare` runs the normal pipeline (:class:`pipeline.engine.runner.Runner`) up to the last stage classify
   reads (``context``, or ``keyframes`` when classify shows no summaries), so every artifact comes from, and
   goes to, the shared cache; a clip that fails there is left out (listed in ``CKPT/prepare/failures.jsonl``).
4. :class:`PromptDataset` renders each clip's prompt with :func:`stages.classify.render`, i.e. exactly the
   prompt ``classify`` scores; :func:`collate` batches them with their label indices.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline.core.cache import Cache
from pipeline.core.errors import FinetuneError
from pipeline.core.jobs import ClipJob
from pipeline.engine.inputs import VideoRef
from pipeline.engine.runner import Runner
from pipeline.eval.labels import LabelSet, match_labels, read_labels
from pipeline.training.split import stratified_split
from stages import STAGES, classify
from stages.templates import PromptRenderer


@dataclass(frozen=True)
class LabelledClip:
    """One labelled clip and the cache keys of the artifacts its prompt is rendered from."""

    video: str
    path: str
    fingerprint: str
    label: str
    upstream: dict


def collect_labels(refs: list[VideoRef], label_set: LabelSet, labels_file: str | Path | None,
                   label_format: str = "csv", source: str = "the input list") -> dict[str, str]:
    """``{video id: canonical label}`` for the clips of ``refs`` that have a label."""
    if labels_file is not None:
        annotations = read_labels(labels_file, label_format, label_set)
        return match_labels(annotations, [r.id for r in refs]).matched
    return {r.id: label_set.canonical(r.label, where=f"{source} (clip {r.id})") for r in refs if r.label}


def split_train_val(labels: dict[str, str], val_fraction: float, seed: int,
                    val_labels: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(train, val) label maps. With ``val_labels`` the validation clips are those; otherwise
    :func:`pipeline.training.split.stratified_split` (a seeded, stratified share of each class by video)."""
    if val_labels is not None:
        val = dict(val_labels)
    else:
        videos = sorted(labels)
        _, val_idx = stratified_split(videos, [labels[v] for v in videos], val_fraction, seed)
        val = {videos[i]: labels[videos[i]] for i in val_idx}
    return {v: y for v, y in labels.items() if v not in val}, val


def check_training_set(train: dict[str, str], source: str) -> None:
    counts = Counter(train.values())
    if not counts:
        raise FinetuneError(f"{source}: no labelled training clip (pass --labels FILE, or a CSV list with a "
                            "'label' column)")
    if len(counts) < 2:
        (only, n), = counts.items()
        raise FinetuneError(
            f"{source}: the training set has only one class ('{only}', {n} clip{'s' * (n != 1)}); fine-tuning a "
            "classifier needs clips of at least two classes"
        )


def clips_per_class(labels: dict[str, str] | list[str], names: list[str]) -> dict[str, int]:
    """Clips per class in label-set order (zeros included)."""
    c = Counter(labels.values() if isinstance(labels, dict) else labels)
    return {n: int(c.get(n, 0)) for n in names}


def class_weights(counts: dict[str, int], mode: str, beta: float = 0.999) -> dict[str, float]:
    """Per-class loss weights, mean 1 over the classes with training clips (0 for the others).

    ``inverse``: 1 / n_c. ``effective``: (1 - beta) / (1 - beta ** n_c), the inverse effective number of samples
    (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019). ``none``: 1.
    """
    present = {c: n for c, n in counts.items() if n > 0}
    if mode == "none":
        raw = {c: 1.0 for c in present}
    elif mode == "inverse":
        raw = {c: 1.0 / n for c, n in present.items()}
    elif mode == "effective":
        raw = {c: (1.0 - beta) / (1.0 - beta**n) if beta > 0 else 1.0 for c, n in present.items()}
    else:
        raise ValueError(f"unknown loss weighting {mode!r}; allowed: none, inverse, effective")
    scale = len(raw) / sum(raw.values())
    return {c: (raw[c] * scale if c in raw else 0.0) for c in counts}


def prepare(cfg, refs: list[VideoRef], labels: dict[str, str], run_dir: Path, cache_dir, quiet: bool,
            log: TextIO) -> tuple[list[LabelledClip], list[str]]:
    """Compute (or find in the cache) the artifacts classify reads, through the normal runner.

    Returns the examples of the clips whose artifacts exist and the ids of the clips that failed.
    """
    upstream = STAGES["classify"].upstream_of(cfg.classify)
    runner = Runner(cfg, run_dir, cache_dir=cache_dir, until=upstream[-1], quiet=quiet, log=log)
    wanted = [r for r in refs if r.id in labels]
    result = runner.run(wanted)
    if result.status != "complete":
        raise FinetuneError(f"preparing the training clips stopped: {result.stop_message}")
    cache = Cache(runner.cache.root)
    examples, failed = [], []
    for r in wanted:
        keys = result.keys.get(r.id, {})
        if all(u in keys and cache.get(u, keys[u]) is not None for u in upstream):
            fp = cache.get(upstream[0], keys[upstream[0]]).meta().get("fingerprint", "")
            examples.append(LabelledClip(r.id, str(r.path), fp, labels[r.id], {u: keys[u] for u in upstream}))
        else:
            failed.append(r.id)
    return examples, failed


class PromptDataset:
    """Map-style dataset: item ``i`` is ``{"video", "prompt", "label"}``, the prompt rendered exactly as the
    classify stage renders it (same template, timeline, images), the label an index into ``label_names``."""

    def __init__(self, examples: list[LabelledClip], classify_cfg, label_names: list[str], cache_root: str | Path):
        self.examples = list(examples)
        self.cfg = classify_cfg
        self.label_names = list(label_names)
        self.index = {n: i for i, n in enumerate(self.label_names)}
        self.cache = Cache(Path(cache_root))
        self.renderer = PromptRenderer(classify_cfg.prompt_dir, classify_cfg.template)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        arts = {u: self.cache.get(u, k) for u, k in ex.upstream.items()}
        missing = [u for u, a in arts.items() if a is None]
        if missing:
            raise FinetuneError(f"{ex.video}: cached artifact(s) {missing} disappeared from the cache "
                                f"{self.cache.root}; run dfer finetune again to recompute them")
        job = ClipJob(ex.video, Path(ex.path), ex.fingerprint, ex.label, arts)
        prompt, _track, _frames = classify.render(job, self.cfg, self.renderer, self.label_names)
        return {"video": ex.video, "prompt": prompt, "label": self.index[ex.label]}


@dataclass
class Batch:
    videos: list[str]
    prompts: list
    labels: "object"  # torch.LongTensor (B,)


def collate(items: list[dict]) -> Batch:
    import torch

    return Batch([it["video"] for it in items], [it["prompt"] for it in items],
                 torch.tensor([it["label"] for it in items], dtype=torch.long))


__all__ = ["Batch", "LabelledClip", "PromptDataset", "check_training_set", "clips_per_class", "class_weights", "collate",
           "collect_labels", "prepare", "split_train_val"]
