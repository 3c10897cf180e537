"""Local transformers backend: ``AutoProcessor`` + ``AutoModelForImageTextToText``.

Modules: ``backend`` (:class:`TransformersBackend`: the backend interface, generation, adapters, encoding),
``loading`` (``from_pretrained``, devices, dtypes, what "not available here" means), ``templates`` (prompts as the
model's chat template renders them, what the template puts around an answer, video input) and ``scoring``
(closed-set label scoring over a shared prompt KV cache, checked once against the plain route).

Fine-tuning and adapters
    :meth:`TransformersBackend.label_token_logprobs` is the plain route with gradients, one label per prompt:
    ``dfer finetune`` (``pipeline/finetune/``) takes its negative sum as the loss, so training and scoring read
    the same label tokens at the same positions. :meth:`TransformersBackend.apply_adapter` loads LoRA adapters
    onto the loaded model and merges them into its weights (``classify.adapter``).
"""

from pipeline.backends.hf.backend import TransformersBackend
from pipeline.backends.hf.loading import device_map_for, resolve_dtype
from pipeline.backends.hf.templates import processor_takes_video, video_metadata

__all__ = ["TransformersBackend", "device_map_for", "processor_takes_video", "resolve_dtype", "video_metadata"]
