"""``finetune()``: one fine-tuning run from its inputs to ``CKPT/adapter`` (labels, the train/validation split, the
upstream artifacts through the runner, then a new training, a resumed one, or none when the run is already trained).

Running the same command with the same ``--out`` resumes from the last checkpoint and ends with the same weights as
an uninterrupted run; a changed setup (config, data, base model: :mod:`.setup`) is refused with the list of what
changed. The training itself is :mod:`.trainer`'s.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from pipeline.core.cache import Cache, default_cache_dir
from pipeline.core.errors import FinetuneError
from pipeline.core.files import write_atomic
from pipeline.engine.config import dump_config
from pipeline.engine.inputs import VideoRef, discover
from pipeline.eval.labels import load_label_set
from pipeline.finetune.data import (LabelledClip, check_training_set, clips_per_class, collect_labels, prepare,
                                    split_train_val)
from pipeline.finetune.setup import setup_diff, setup_record
from pipeline.finetune.trainer import Trainer, make_accelerator
from pipeline.training import checkpoint as ckpt
from pipeline.training.tracking import check_trackers
from stages import classify


@dataclass
class FinetuneResult:
    out_dir: Path
    adapter_dir: Path | None
    """``CKPT/adapter``: the adapter of the best validation UAR (the last epoch's without validation)."""
    last_adapter_dir: Path | None
    """The adapter of the latest checkpoint."""
    history: list[dict]
    """Per epoch (``epoch`` 0 = the base model before training): train_loss and val_uar/val_war/val_macro_f1/
    val_loss/val_n."""
    steps: list[dict]
    """Per optimizer step: step, epoch, loss (mean over the step's clips and devices), lr."""
    best: dict | None
    global_step: int
    total_steps: int
    n_train: int
    n_val: int
    train_counts: dict[str, int]
    resumed_from: int | None = None
    failed_clips: list[str] = field(default_factory=list)


def _finish(out: Path, state: dict, counts: dict[str, int]) -> tuple[Path, Path]:
    """Materialise ``CKPT/adapter`` (best, or last without validation) and the summary files."""
    last = ckpt.latest(out)
    src = ckpt.root(out) / state["best"]["dir"] if state.get("best") else last / "adapter"
    ckpt.replace_dir_from(src, out / "adapter")
    ckpt.write_json(out / "train_counts.json", counts)
    ckpt.write_json(out / "metrics.json", {"best": state.get("best"), "history": state["history"],
                                           "global_step": state["global_step"], "total_steps": state["total_steps"],
                                           "train_counts": counts})
    return out / "adapter", last / "adapter"


def finetune(train_input, labels_file, out_dir, cfg, *, label_format: str = "csv", val_labels=None,
             val_label_format: str | None = None, cache_dir=None, quiet: bool = False,
             log: TextIO | None = None, refs: list[VideoRef] | None = None) -> FinetuneResult:
    """Train LoRA adapters for ``cfg.classify`` on the labelled clips of ``train_input`` (see the module docstring).

    ``labels_file``: a label file (``label_format``: csv ``video,label``, dfew, ferv39k, mafw); None: the ``label``
    column of a CSV list ``train_input``. ``val_labels``: a label file naming the validation clips (else
    ``cfg.finetune.val_fraction`` of each class is held out). ``out_dir`` (``CKPT``) receives ``adapter/`` (use it
    with ``classify.adapter=CKPT``), ``checkpoints/``, ``metrics.json``, ``train_counts.json``, ``split.json``,
    ``finetune.yaml`` and ``prepare/`` (the run that computed the upstream artifacts). Calling it again with the
    same ``out_dir`` resumes (also after the process was killed or interrupted).

    ``refs``: the clips themselves (e.g. one fold's training split, labels on the refs), instead of discovering
    ``train_input`` (then only named in messages).

    Raises :class:`FinetuneError` / :class:`pipeline.eval.labels.LabelError` / :class:`stages.modelstage.PreflightError`
    before any training for unusable inputs.
    """
    log = log or sys.stderr
    out = Path(out_dir)
    fcfg, ccfg = cfg.finetune, cfg.classify
    if ccfg.model.backend != "transformers":
        raise FinetuneError(f"finetune trains a local model: classify.model.backend must be 'transformers', "
                            f"got {ccfg.model.backend!r}")
    if ccfg.adapter is not None:
        raise FinetuneError(f"classify.adapter is set ({ccfg.adapter}): fine-tuning starts from the base model "
                            "classify.model.model; unset classify.adapter")
    label_set = load_label_set(ccfg.labels)
    names = label_set.names
    refs = list(refs) if refs is not None else discover(train_input)
    source = str(labels_file) if labels_file is not None else str(train_input)
    labels = collect_labels(refs, label_set, labels_file, label_format, source)
    val_map = None
    if val_labels is not None:
        val_map = collect_labels(refs, label_set, val_labels, val_label_format or label_format, str(val_labels))
        if not val_map:
            raise FinetuneError(f"--val-labels {val_labels}: names no clip of {train_input}")
    check_training_set(labels, source)
    train_map, val_map = split_train_val(labels, fcfg.val_fraction, fcfg.seed, val_map)
    check_training_set(train_map, source)
    message = classify.preflight(ccfg)
    if message:
        raise FinetuneError(message)

    if importlib.util.find_spec("peft") is None:
        raise FinetuneError("dfer finetune needs the 'peft' package: pip install 'dfer-pipeline[train]'")
    check_trackers(fcfg.report_to, "finetune.report_to")

    accelerator = make_accelerator(fcfg, ccfg.model.device)
    main = accelerator.is_main_process
    show = cfg.run.progress and not quiet and main
    failed: list[str] = []
    split_file = out / "split.json"
    if accelerator.num_processes > 1:  # the others wait for this run's split.json, not an older one
        accelerator.wait_for_everyone()
        if main:
            split_file.unlink(missing_ok=True)
        accelerator.wait_for_everyone()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "finetune.yaml", dump_config(cfg))
        examples, failed = prepare(cfg, refs, {**train_map, **val_map}, out / "prepare", cache_dir, quiet or not show, log)
        if failed:
            print(f"note: {len(failed)} clip(s) failed in the pipeline and are left out "
                  f"(see {out / 'prepare' / 'failures.jsonl'})", file=log)
        by_id = {e.video: e for e in examples}
        split = {"train": [asdict(by_id[v]) for v in sorted(train_map) if v in by_id],
                 "val": [asdict(by_id[v]) for v in sorted(val_map) if v in by_id],
                 "failed": failed, "labels": names, "unlabelled": len(refs) - len(labels)}
        ckpt.write_json(split_file, split)
    else:  # preparing may take hours on a large set: poll instead of a collective that would time out
        while not split_file.is_file():
            time.sleep(5)
    accelerator.wait_for_everyone()
    split = ckpt.read_json(split_file)
    train = [LabelledClip(**d) for d in split["train"]]
    val = [LabelledClip(**d) for d in split["val"]]
    check_training_set({e.video: e.label for e in train}, source)
    counts = clips_per_class([e.label for e in train], names)
    if main:
        print(f"finetune: {len(train)} training clips ({', '.join(f'{k} {v}' for k, v in counts.items() if v)}), "
              f"{len(val)} validation clips; sampling {fcfg.sampling}, loss weights {fcfg.loss_weights}", file=log)
    setup = setup_record(cfg, names, train, val, accelerator.num_processes)
    cache_root = Cache(cache_dir if cache_dir is not None else default_cache_dir()).root
    session = ckpt.CheckpointSession(out, process=accelerator.process_index, main=main,
                                     barrier=accelerator.wait_for_everyone)
    resume_from, st = session.resumable() or (None, None)
    diff = setup_diff(st["setup"], setup) if st is not None else []
    if diff:
        raise FinetuneError(f"{out} holds a fine-tuning run with another setup, so it cannot be resumed: " + "; ".join(diff)
                            + f". Use another --out, or delete {session.root} to start over.")
    trained_before, resumed = bool(st and st.get("done")), None
    if not trained_before:
        trainer = Trainer(cfg, accelerator, session, names, train, val, cache_root, setup, log, show)
        try:
            if resume_from is not None:
                trainer.resume(resume_from, st)
                resumed = trainer.state["global_step"]
                if main:
                    print(f"finetune: resuming from {resume_from} (epoch {trainer.state['epoch'] + 1}, "
                          f"step {resumed}/{trainer.total_steps})", file=log)
            trainer.train()
        finally:
            trainer.close()
        st = trainer.state
    adapter, last = _finish(out, st, counts) if main else (out / "adapter", ckpt.latest(out) / "adapter")
    accelerator.wait_for_everyone()
    if main and trained_before:
        print(f"finetune: {out} is already trained ({st['global_step']} steps); adapter: {adapter}", file=log)
    elif main:
        best = st.get("best")
        note = (f"best val UAR {100 * best['uar']:.2f} (epoch {best['epoch']})" if best else "no validation set: last epoch")
        print(f"finetune: done, {st['global_step']} steps; adapter ({note}): {adapter}\n"
              f"use it with: --set classify.adapter={out}", file=log)
    return FinetuneResult(out_dir=out, adapter_dir=adapter, last_adapter_dir=last, history=st["history"],
                          steps=st["steps"], best=st.get("best"), global_step=st["global_step"],
                          total_steps=st["total_steps"], n_train=len(train), n_val=len(val), train_counts=counts,
                          resumed_from=resumed, failed_clips=failed)


__all__ = ["FinetuneResult", "finetune"]
