"""``dfer export RUN --format llamafactory|sharegpt``: a run's classify prompts as a fine-tuning dataset.

Each labelled clip (each unit of a run split by person, where the label names that person) becomes one sample:
the prompt the classify stage builds for it (:func:`stages.classify.render`, the same function the stage and
``dfer finetune`` use, with the run's own ``config.yaml``), as one user turn whose text holds an ``<image>``
placeholder where each keyframe goes, and the clip's true label (the label set's canonical name) as the
assistant's answer. The images are the face crops the model was shown, written beside the data::

    DIR/dataset_info.json        LLaMA-Factory's dataset description (one entry, named --name)
    DIR/<name>.json              the samples: [{"messages" or "conversations": [...], "images": [...], "id": ...}]
    DIR/images/<clip>/<frame>.jpg the crops, in the order of the placeholders (paths relative to DIR)
    DIR/dfer-export.json         what wrote the folder: the run, the format, the counts (dfer's marker)

Formats (LLaMA-Factory's ``sharegpt`` formatting in both; data/README.md of hiyouga/LLaMA-Factory):
``llamafactory`` writes OpenAI-style messages (column ``messages``, tags ``role``/``content``, roles
``user``/``assistant``/``system``); ``sharegpt`` writes classic ShareGPT turns (column ``conversations``, tags
``from``/``value``, roles ``human``/``gpt``/``system``), which other trainers read too.

A crop is written as the JPEG bytes the cache holds when the prompt shows it at its stored size (the model was
shown exactly that JPEG decoded), else as a PNG of the resized crop the model was shown. Clips without a true label
are left out and counted; a clip whose artifacts are gone, or that failed before its prompt could be built, is
left out with a note. A clip whose text contains a placeholder of LLaMA-Factory's (``<image>``, ``<video>``,
``<audio>``) is left out with a note, since the loader would count it as an image.

The folder is dfer's: a new folder, an empty one, or one an earlier ``dfer export`` wrote (its marker), which is
replaced whole (written beside it, then swapped in); any other folder that holds files is refused and left as it
is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pipeline.backends.base import Video
from pipeline.core.errors import CacheError, ConfigError, ExportError, InputError
from pipeline.core.files import atomic_dir, json_text
from pipeline.core.jobs import ClipJob
from pipeline.core.paths import output_dir, shown
from pipeline.engine.config import key_fields, load_config
from pipeline.engine.rundir import CONFIG, EXPORT_DIRS, MANIFEST, RunDir
from pipeline.eval.labels import LabelError, load_label_set
from stages import classify
from stages.faces.facetrack import FaceTrack
from stages.templates import PromptRenderer, template_hash, template_path

MARKER = "dfer-export.json"
DATASET_INFO = "dataset_info.json"
IMAGES = "images"
PLACEHOLDER = "<image>"
RESERVED = ("<image>", "<video>", "<audio>")  # LLaMA-Factory's placeholders: never in a sample's own text


@dataclass(frozen=True)
class Format:
    """How one format names the messages column, its keys and its roles (LLaMA-Factory's ``columns``/``tags``)."""

    messages: str
    role: str
    content: str
    user: str
    assistant: str
    system: str = "system"

    def info(self, file_name: str) -> dict:
        """The ``dataset_info.json`` entry of a file in this format."""
        return {"file_name": file_name, "formatting": "sharegpt",
                "columns": {"messages": self.messages, "images": "images"},
                "tags": {"role_tag": self.role, "content_tag": self.content, "user_tag": self.user,
                         "assistant_tag": self.assistant, "system_tag": self.system}}


FORMATS = {
    "llamafactory": Format("messages", "role", "content", "user", "assistant"),
    "sharegpt": Format("conversations", "from", "value", "human", "gpt"),
}


@dataclass
class ExportSummary:
    """What :func:`export_dataset` wrote."""

    folder: Path
    name: str
    samples: int = 0
    images: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0
    other_people: int = 0  # units of a clip split by person other than its subject (the label names the subject)
    notes: list[str] = field(default_factory=list)


def _folder_name(uid: str) -> str:
    """A file name for a clip (or unit): its id with every character outside ``[A-Za-z0-9._-]`` as ``_``, cut to
    80 characters, and 8 hex digits of its hash (ids that differ only in those characters stay apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", uid)[-80:].lstrip(".") or "clip"
    return f"{safe}-{hashlib.sha256(uid.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def dataset_name(run: Path) -> str:
    """The default ``--name``: ``dfer_`` and the run folder's name (letters, digits, ``_``)."""
    return "dfer_" + (re.sub(r"[^A-Za-z0-9_]", "_", run.resolve().name) or "run")


def check_folder(out: Path, option: str | None = "-o") -> None:
    """Refuse (:class:`ExportError`, nothing touched) a path that is not a folder, or a folder that holds something
    and was not written by ``dfer export``."""
    try:
        output_dir(out, option)
    except InputError as exc:
        raise ExportError(str(exc)) from None
    if not out.exists() or (out / MARKER).is_file():
        return
    present = sorted(os.listdir(out))
    if present:
        listed = ", ".join(shown(n) for n in present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
        raise ExportError(
            f"{shown(out)} is not empty and was not written by `dfer export` (no {MARKER}; it holds {listed}). dfer "
            "writes a dataset only into a new or empty folder or into one of its own, so that no file of yours is "
            "removed or overwritten: give another folder (-o), or move what is there elsewhere first")


def _write_image(folder: Path, rel: str, jpeg: bytes, image: Image.Image) -> str:
    """Write one crop; returns its path relative to the dataset folder (``.jpg``: the cached bytes, when the prompt
    showed the crop at its stored size; ``.png`` of the image shown otherwise)."""
    if Image.open(io.BytesIO(jpeg)).size == image.size:
        name = rel + ".jpg"
        (folder / name).write_bytes(jpeg)  # (in a folder renamed into place)
    else:
        name = rel + ".png"
        image.save(folder / name, format="PNG")  # (in a folder renamed into place)
    return name


def _check_same_prompt(row, cache, ccfg, frames: list[int], config_file: Path) -> None:
    """Where the run scored the clip, its classify artifact records what built the prompt (stage version, settings,
    template) and the frames it showed: refuse an export whose prompt would differ (``config.yaml`` or the template
    edited since the run, or another dfer version)."""
    key = row.artifacts.get("classify")
    art = cache.get("classify", key) if key else None
    if art is None:
        return
    meta = art.meta()
    if meta.get("stage_version") != classify.VERSION:
        raise ExportError(f"{row.id}: the run's prompts were built by classify version {meta.get('stage_version')}, "
                          f"this dfer builds version {classify.VERSION}: run `dfer run` again with this dfer, then export")
    now = json.loads(json.dumps(key_fields(ccfg)))
    then = meta.get("config") or {}
    changed = sorted(k for k in set(now) | set(then) if k != "model" and now.get(k) != then.get(k))
    if changed:
        raise ExportError(f"{config_file} says " + ", ".join(f"classify.{k}={now.get(k)!r}" for k in changed)
                          + f" but the run built the prompt of {row.id} with "
                          + ", ".join(f"classify.{k}={then.get(k)!r}" for k in changed)
                          + ": the file was edited since the run; put it back, or run `dfer run` again and then export")
    used = (meta.get("extras") or {}).get("template")
    if used is not None and used != template_hash(ccfg.prompt_dir, ccfg.template):
        path = template_path(ccfg.prompt_dir, ccfg.template)
        raise ExportError(f"{path}: the template changed since the run built its prompts with it (run {row.id}); "
                          "the export would not hold the prompts the model was shown: put the template back, or run "
                          "`dfer run` again and then export")
    scored = art.json(classify.SCORES_FILE).get("frame_indices")
    if scored is not None and list(scored) != list(frames):
        raise ExportError(f"{row.id}: the run's prompt showed frames {list(scored)}, the prompt built now shows "
                          f"{list(frames)}: run `dfer run` again and then export")


def _sample(row, cache, ccfg, renderer, label_names, tags: Format, label: str, folder: Path,
            config_file: Path) -> tuple[dict, int]:
    """One sample and its number of images, writing the images into ``folder``; :class:`_LeftOut` when the clip's
    prompt cannot be built."""
    arts = {}
    for stage in classify.upstream(ccfg):
        if stage == "expression":  # read by the embedded baseline's scores only, not by the prompt
            continue
        art = cache.get(stage, row.artifacts[stage]) if row.artifacts.get(stage) else None
        if art is None:
            raise _LeftOut(f"no {stage} artifact (the clip failed before it, or it left the cache)")
        arts[stage] = art
    job = ClipJob(row.video, Path(row.path), row.fingerprint or "", label, arts, unit=dict(row.unit))
    prompt, track, frames = classify.render(job, ccfg, renderer, label_names)
    _check_same_prompt(row, cache, ccfg, frames, config_file)
    text, images_shown = [], []
    for part in prompt.parts:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, Video):  # refused before any clip (dense_input=video)
            raise ExportError(f"{row.id}: a video input cannot be exported")
        else:
            text.append(PLACEHOLDER)
            images_shown.append(part)
    for word in RESERVED:
        n_in_text = sum(p.count(word) for p in prompt.parts if isinstance(p, str))
        if n_in_text:
            raise _LeftOut(f"its prompt's text holds {word!r} {n_in_text} time(s) (in a summary or the template), "
                           "which LLaMA-Factory would take for a placeholder")
    if len(frames) != len(images_shown):
        raise _LeftOut(f"its prompt shows {len(images_shown)} images for {len(frames)} frames")
    sub = _folder_name(row.id)
    (folder / IMAGES / sub).mkdir(parents=True, exist_ok=True)
    jpegs = FaceTrack.of(job).crop_bytes(frames)
    images = [_write_image(folder, f"{IMAGES}/{sub}/{i:06d}", data, img) for i, data, img in zip(frames, jpegs, images_shown)]
    msgs = [{tags.role: tags.system, tags.content: prompt.system}] if prompt.system else []
    msgs += [{tags.role: tags.user, tags.content: "".join(text)}, {tags.role: tags.assistant, tags.content: label}]
    return {tags.messages: msgs, "images": images, "id": shown(row.id)}, len(images)


class _LeftOut(Exception):
    """A clip whose prompt cannot be built (the reason)."""


def export_dataset(run_dir: str | Path, fmt: str, output: str | Path | None = None,
                   name: str | None = None) -> ExportSummary:
    """Write the labelled clips of a run as a ``fmt`` dataset into ``output`` (default ``RUN/<fmt>``)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    tags = FORMATS[fmt]
    run = RunDir(run_dir)
    rows = run.manifest()  # a folder that is not a run is refused here, naming the file it lacks
    if not (run / CONFIG).is_file():
        raise ExportError(f"{run / CONFIG} not found: the prompts are built with the run's own settings")
    try:
        cfg = load_config(run / CONFIG)
    except ConfigError as exc:
        raise ExportError(f"{run / CONFIG}: the run's settings cannot be read by this dfer ({exc})") from None
    ccfg = cfg.classify
    if ccfg.dense_input == "video":
        raise ExportError(f"{run / CONFIG}: classify.dense_input=video: the export writes images, and LLaMA-Factory's "
                          "videos are not what dfer showed; export a run with dense_input=images")
    if cfg.faces.segments:
        raise ExportError(f"{run / CONFIG}: faces.segments={cfg.faces.segments}: the units of a segmented run are "
                          "segments, which carry no label of their own; export a run of the same clips without "
                          "--segments (on the same cache only keyframes, context and classify are computed again)")
    name = name if name is not None else dataset_name(run.path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ExportError(f"--name {name!r}: a dataset name of letters, digits, '_', '.' or '-' (not first: '.')")
    if f"{name}.json" in (DATASET_INFO, MARKER):
        raise ExportError(f"--name {name!r}: its file would be {name}.json, which the export writes for itself; "
                          "choose another name")
    out = Path(output) if output is not None else run / EXPORT_DIRS[fmt]
    check_folder(out, "-o" if output is not None else None)
    label_set = load_label_set(ccfg.labels)
    renderer = PromptRenderer(ccfg.prompt_dir, ccfg.template)
    cache = run.cache()
    if output is None:
        run.claim()  # RUN/<format> is one of the run directory's folders (an earlier dfer's run is taken over)
    summary = ExportSummary(out, name)
    with atomic_dir(out) as tmp:  # an earlier export there (check_folder) is replaced whole
        samples = []
        for row in rows:
            if row.unit:  # a label names the clip's own subject (unit {}), not the others
                summary.other_people += 1
                continue
            if not row.label:
                summary.unlabelled += 1
                continue
            try:
                label = label_set.canonical(row.label, where=f"{shown(run / MANIFEST)} (clip {shown(row.id)})")
            except LabelError as exc:
                raise ExportError(f"{exc}; the label set is classify.labels={ccfg.labels}") from None
            try:
                sample, n_images = _sample(row, cache, ccfg, renderer, label_set.names, tags, label, tmp, run / CONFIG)
            except _LeftOut as why:
                summary.notes.append(f"{shown(row.id)}: left out: {why}")
                continue
            except CacheError as exc:
                summary.notes.append(f"{shown(row.id)}: left out: its artifacts cannot be read ({exc})")
                continue
            samples.append(sample)
            summary.samples += 1
            summary.images += n_images
            summary.per_label[label] = summary.per_label.get(label, 0) + 1
        if not samples:
            why = [f"{summary.unlabelled} clip(s) without a true label"] if summary.unlabelled else []
            why += [f"{summary.other_people} other person(s) of split clips"] if summary.other_people else []
            why += [f"{len(summary.notes)} left out (first: {summary.notes[0]})"] if summary.notes else []
            raise ExportError(f"{shown(run / MANIFEST)}: no clip to export: " + ("; ".join(why) or "no clips")
                              + "; nothing written")
        file_name = f"{name}.json"
        marker = {"written_by": "dfer export", "format": fmt, "run": str(run.path.resolve()), "dataset": name,
                  "samples": summary.samples, "images": summary.images, "per_label": summary.per_label,
                  "unlabelled_left_out": summary.unlabelled, "other_people_left_out": summary.other_people,
                  "notes": summary.notes}
        for file, doc, indent in ((file_name, samples, 1), (DATASET_INFO, {name: tags.info(file_name)}, 2),
                                  (MARKER, marker, 1)):
            (tmp / file).write_text(json_text(doc, indent=indent) + "\n", encoding="utf-8")  # (in a folder renamed into place)
    return summary
