"""What a model's chat template makes of a prompt, and what it puts around an answer.

Prompts
    A :class:`Prompt` becomes one user message whose content lists ``{"type": "image"}``, ``{"type": "video"}`` and
    ``{"type": "text", ...}`` entries in the prompt's order (plus an optional system message), rendered with the
    model's own chat template and ``add_generation_prompt=True``. A :class:`Video` part goes to the processor's
    video processor as its frames, unsampled (``do_sample_frames=False``), with ``video_metadata`` giving the frame
    rate measured from the frames' timestamps (:func:`video_metadata`); a model whose processor has no video
    processor or whose chat template has no video slot raises :class:`VideoInputUnsupportedError`
    (:meth:`TransformersBackend.check_video` says so before any weights are loaded).

Answers (:func:`analyse_template`)
    A label is scored as the assistant would write it, according to the model's chat template: at load time the
    template is rendered once with a generation prompt and once with an assistant turn holding a sentinel; whatever
    the template puts between the generation prompt and the assistant text is the *separator* (``""`` for
    ChatML/Qwen2-VL, whose prompt ends in ``<|im_start|>assistant\\n``; ``" "`` for Idefics3/SmolVLM, whose prompt
    ends in ``Assistant:``), and the first token after the assistant text is the *end-of-turn* token
    (``<|im_end|>``, ``<end_of_utterance>``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from PIL import Image

from pipeline.backends.base import Prompt, Video, prepare_image
from pipeline.core.errors import ModelLoadError, VideoInputUnsupportedError

log = logging.getLogger(__name__)

_SENTINEL = "\u2063DFER_LABEL_SENTINEL\u2063"
NO_VIDEO_SLOT = "its processor has no video processor or its chat template no video slot"


@dataclass
class Rendered:
    """A prompt as the chat template renders it: the text with the template's placeholders, and the prepared images
    and videos in order."""

    text: str
    images: list
    videos: list = field(default_factory=list)  # Video parts, frames prepared

    def size_hint(self) -> tuple[int, int, int]:
        """How long the model's input will be, roughly, without running the processor, for putting prompts of similar
        length in one batch: the number of images and video frames, their pixels, the characters of the text."""
        visual = [*self.images, *(f for v in self.videos for f in v.frames)]
        return len(visual), sum(im.width * im.height for im in visual), len(self.text)

    def identity(self) -> tuple:
        """Everything the processor's output depends on: the text, each image's size, mode and pixels (a digest), each
        video's frames and timestamps."""

        def image(im) -> tuple:
            return im.size, im.mode, hashlib.blake2b(im.tobytes(), digest_size=16).digest()

        return (self.text, tuple(image(im) for im in self.images),
                tuple((tuple(image(f) for f in v.frames), tuple(v.timestamps)) for v in self.videos))


def processor_takes_video(processor) -> bool:
    """The processor has a video processor and its chat template puts something in the text for a video part."""
    if getattr(processor, "video_processor", None) is None:
        return False
    template = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if template is None:
        return False

    def render(content):
        return processor.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                             add_generation_prompt=True, tokenize=False)

    try:
        text = [{"type": "text", "text": "x"}]
        return render([{"type": "video"}, *text]) != render(text)
    except Exception:
        return False


def video_error(model: str, why: str) -> VideoInputUnsupportedError:
    return VideoInputUnsupportedError(
        f"model {model!r} cannot take video input ({why}); use classify.dense_input=images (the dense frames as "
        "images) or a model whose processor takes videos (Qwen2-VL, Qwen2.5-VL, ...)"
    )


def chat_messages(prompt: Prompt, image_max_side: int | None, takes_video: bool, model: str
                  ) -> tuple[list[dict], list, list[Video]]:
    """The chat messages of ``prompt`` (an optional system turn, one user turn), and its prepared images and
    videos in order; a video part for a model that takes no video is a :class:`VideoInputUnsupportedError`."""
    content, images, videos = [], [], []
    for part in prompt.parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        elif isinstance(part, Image.Image):
            content.append({"type": "image"})
            images.append(prepare_image(part, image_max_side))
        elif isinstance(part, Video):
            if not takes_video:
                raise video_error(model, NO_VIDEO_SLOT)
            content.append({"type": "video"})
            frames = [prepare_image(f, image_max_side) for f in part.frames]
            videos.append(Video(frames, list(part.timestamps)))
        else:
            raise TypeError(f"prompt parts must be str, PIL.Image.Image or Video, got {type(part).__name__}")
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    messages.append({"role": "user", "content": content})
    return messages, images, videos


def analyse_template(processor, tokenizer, model: str) -> tuple[str, str | None]:
    """Separator between generation prompt and answer, and the special token that ends the turn (see the module
    docstring)."""
    user = {"role": "user", "content": [{"type": "text", "text": "hello"}]}
    asst = {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}
    try:
        gen = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template([user, asst], add_generation_prompt=False, tokenize=False)
    except Exception as exc:
        raise ModelLoadError(f"Model {model!r}: its chat template cannot be rendered: {exc}") from exc
    sep, end = "", None
    if full.startswith(gen) and _SENTINEL in full[len(gen) :]:
        at = full.index(_SENTINEL, len(gen))
        sep = full[len(gen) : at]
        tail = full[at + len(_SENTINEL) :]
        special = sorted(
            (t for t in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()) if t),
            key=len,
            reverse=True,
        )
        end = next((t for t in special if tail.startswith(t)), None)
    else:
        log.warning(
            "model %s: the chat template's answer does not start right after its generation prompt; "
            "labels are scored directly after the generation prompt, with no end-of-turn score",
            model,
        )
    return sep, end


def video_metadata(video: Video) -> dict:
    """transformers ``VideoMetadata`` fields for a :class:`Video`: its frames are the whole video, at the rate
    measured from their timestamps (``fps``; Qwen2.5-VL turns it into the temporal spacing of its positions)."""
    n = len(video.frames)
    span = video.timestamps[-1] - video.timestamps[0]
    fps = video.fps
    return {"total_num_frames": n, "fps": fps, "frames_indices": list(range(n)),
            "duration": span + (1.0 / fps if fps else 0.0)}
