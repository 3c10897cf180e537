"""Local transformers backend: ``AutoProcessor`` + ``AutoModelForImageTextToText``.

This module loads the model and drives it (the backend interface, generation, adapters, encoding); what the
model's chat template makes of a prompt is :mod:`.hf_templates`'s, closed-set label scoring over a shared prompt KV
cache :mod:`.hf_scoring`'s.

Loading
    A hub id and a local folder go through the same ``from_pretrained`` calls (``revision`` and ``trust_remote_code``
    passed through). ``dtype``/``device`` become ``dtype=`` and an accelerate ``device_map`` (``{"": "cpu"}``,
    ``{"": "cuda:1"}``, or ``"balanced"`` over all GPUs), ``attn_implementation`` becomes ``attn_implementation=``
    (:func:`attention_kwargs`; ``auto``: transformers' default). Offline (``HF_HUB_OFFLINE=1``) or with the hub
    unreachable, loading is local-files-only and a model that is not cached raises :class:`ModelUnavailableError`;
    something that exists but is not an image-text-to-text checkpoint raises :class:`ModelLoadError`.

Fine-tuning and adapters
    :meth:`TransformersBackend.label_token_logprobs` is the plain route with gradients, one label per prompt:
    ``dfer finetune`` (``pipeline/finetune/``) takes its negative sum as the loss, so training and scoring read
    the same label tokens at the same positions. :meth:`TransformersBackend.apply_adapter` loads LoRA adapters
    onto the loaded model and merges them into its weights (``classify.adapter``).
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import os
import threading
from collections import OrderedDict

from pipeline.backends.base import Backend, LabelScore, ModelConfig, Prompt
from pipeline.backends.hf_scoring import LabelScoring
from pipeline.backends.hf_templates import (NO_VIDEO_SLOT, Rendered, analyse_template, chat_messages, processor_takes_video,
                                            video_error, video_metadata)
from pipeline.core.errors import ModelLoadError, ModelUnavailableError
from pipeline.models import hub
from pipeline.models.devices import resolve_device
from pipeline.models.quiet import quiet_peft


def _is_unavailable(exc: BaseException) -> bool:
    """Does this loading error (or anything in its chain) mean "files not available here"?"""
    names = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "RepositoryNotFoundError",
        "GatedRepoError",
        "RevisionNotFoundError",
        "HFValidationError",
    }
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in names:
            return True
        text = str(e)
        if "couldn't connect to" in text or "Cannot find the requested files" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def device_map_for(setting: str):
    """``ModelConfig.device`` as ``(device_map, input_device)`` for ``from_pretrained``; ``input_device`` is None for
    ``balanced`` (known once the model is placed)."""
    import torch

    device = resolve_device(setting, balanced=True)
    if device == "balanced":
        return "balanced", None
    dev = torch.device("cuda:0" if device == "cuda" else device)
    return {"": str(dev)}, dev


def resolve_dtype(dtype: str, input_device):
    import torch

    if dtype == "auto":
        on_cpu = input_device is not None and input_device.type == "cpu"
        return torch.float32 if on_cpu else "auto"
    return getattr(torch, dtype)


def attention_kwargs(cfg: ModelConfig) -> dict:
    """``from_pretrained``'s ``attn_implementation`` for ``cfg.attn_implementation`` (nothing for ``auto``: transformers
    picks); :class:`ModelLoadError` naming the setting where flash-attention 2 cannot run here (checked before any
    weights are read, and in the pre-flight)."""
    impl = cfg.attn_implementation
    if impl == "auto":
        return {}
    if impl == "flash_attention_2":
        other = "use attn_implementation=sdpa (or auto)"
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelLoadError(f"attn_implementation=flash_attention_2 needs the flash-attn package, which is not "
                                 f"installed here (pip install flash-attn --no-build-isolation, on a machine with a CUDA "
                                 f"GPU); {other}")
        if cfg.dtype == "float32":
            raise ModelLoadError(f"attn_implementation=flash_attention_2 runs in bfloat16 or float16, not dtype=float32; "
                                 f"set dtype=bfloat16, or {other}")
        if resolve_device(cfg.device, balanced=True) == "cpu":
            raise ModelLoadError(f"attn_implementation=flash_attention_2 runs on CUDA GPUs only, and device={cfg.device} "
                                 f"means the CPU here; {other}")
    return {"attn_implementation": impl}


def _load_pretrained(cfg: ModelConfig):
    """``(processor, model, input_device)`` of ``cfg`` (see the module docstring); the model in eval mode, the
    input device where its embeddings are when the model is spread over several GPUs."""
    from transformers import AutoModelForImageTextToText, AutoProcessor  # start-up time: torch and transformers

    source, common = hub.source(cfg.model, cfg.revision, trust_remote_code=cfg.trust_remote_code)
    local_only = common["local_files_only"]
    attention = attention_kwargs(cfg)
    device_map, input_device = device_map_for(cfg.device)
    dtype = resolve_dtype(cfg.dtype, input_device)
    try:
        processor = AutoProcessor.from_pretrained(source, **common)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, device_map=device_map, **attention,
                                                            **common)
    except Exception as exc:
        if _is_unavailable(exc):
            raise ModelUnavailableError(
                f"Model {cfg.model!r}{hub.revision_note(cfg.revision)} is not available here ({'offline, ' if local_only else ''}"
                f"no usable local copy): {exc}. " + hub.how_to_point_at_local_model(cfg.model)
            ) from exc
        raise ModelLoadError(
            f"Model {cfg.model!r}{hub.revision_note(cfg.revision)} could not be loaded as an image-text-to-text model "
            f"(AutoProcessor + AutoModelForImageTextToText): {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    if input_device is None:  # device_map over several GPUs: inputs go where the embeddings are
        input_device = model.get_input_embeddings().weight.device
    return processor, model, input_device


def length_batches(rendered: list[Rendered], size: int) -> list[list[int]]:
    """Indices of ``rendered`` in batches of ``size``, prompts of similar length together
    (:meth:`Rendered.size_hint`): a right- or left-padded batch costs its longest prompt's length in every row, so
    prompts of mixed lengths waste the padded positions (prefill, KV cache, its repeat over labels). Results do not
    depend on the batches (label scores: ``tests/test_backend_hf.py``)."""
    order = sorted(range(len(rendered)), key=lambda i: rendered[i].size_hint())
    return [order[i : i + size] for i in range(0, len(order), size)]


TOKEN_COUNTS_KEPT = 4096
"""Prompts whose token count :meth:`TransformersBackend.count_prompt_tokens` remembers (the latest ones)."""


class TransformersBackend(LabelScoring, Backend):
    """See :mod:`pipeline.backends.hf`. Thread-safe (one lock around the model)."""

    def __init__(self, cfg: ModelConfig):
        import torch

        if cfg.backend != "transformers":
            raise ValueError(f"TransformersBackend got backend={cfg.backend!r}")
        self.cfg = cfg
        self._lock = threading.RLock()
        self._torch = torch
        self._load()
        self.scoring_mode = "kv"
        self.kv_token_budget = 1 << 18  # cached prompt tokens allowed in one continuation pass (rows x length)
        self._token_counts: OrderedDict[tuple, int] = OrderedDict()  # Rendered.identity() -> tokens (see _encode)
        self._verified = False
        self.label_separator, self.end_of_turn = analyse_template(self.processor, self.tokenizer, cfg.model)

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        cfg = self.cfg
        self.processor, self.model, self.input_device = _load_pretrained(cfg)
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise ModelLoadError(f"Model {cfg.model!r}: the processor has no tokenizer")
        if getattr(self.processor, "chat_template", None) is None:
            if getattr(tok, "chat_template", None) is None:
                raise ModelLoadError(
                    f"Model {cfg.model!r} has no chat template (processor or tokenizer); an instruction-tuned "
                    "checkpoint is needed"
                )
            self.processor.chat_template = tok.chat_template
        self.tokenizer = tok
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.pad_id = tok.pad_token_id
        inner = getattr(self.model, "model", None)
        self._rope_index = getattr(inner, "get_rope_index", None)
        self._position_rows = 0
        self._video = processor_takes_video(self.processor)
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        """The attention kernels the model runs with (what ``attn_implementation=auto`` became)."""

    # ------------------------------------------------------------------ public API
    @classmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        hub.check_available(cfg.model, cfg.revision)
        attention_kwargs(cfg)

    @classmethod
    def identity(cls, cfg: ModelConfig) -> dict:
        """Hub id + revision, or a local checkpoint's content fingerprint (:func:`pipeline.models.hub.model_identity`)."""
        return hub.model_identity(cfg.model, cfg.revision)

    @classmethod
    def check_video(cls, cfg: ModelConfig) -> None:
        """Pre-flight for video prompts: loads the processor only."""
        from transformers import AutoProcessor

        try:
            source, common = hub.source(cfg.model, cfg.revision, trust_remote_code=cfg.trust_remote_code)
            processor = AutoProcessor.from_pretrained(source, **common)
        except Exception as exc:
            if isinstance(exc, ModelUnavailableError) or _is_unavailable(exc):
                return  # not here: check_available says so
            raise video_error(cfg.model, f"its processor cannot be loaded: {type(exc).__name__}: {exc}") from exc
        if not processor_takes_video(processor):
            raise video_error(cfg.model, NO_VIDEO_SLOT)

    def close(self) -> None:
        with self._lock:
            for name in ("model", "processor", "tokenizer"):
                if hasattr(self, name):
                    delattr(self, name)
            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """The prompt's tokens as the processor makes them; a prompt this backend has just scored or generated from
        is not processed again (its count was kept from that batch)."""
        with self._lock:
            r = self.render_prompt(prompt)
            key = r.identity()
            if key not in self._token_counts:
                self._encode([r], padding_side="right")  # keeps the count
            return self._token_counts[key]

    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        torch = self._torch
        limit = max_new_tokens or self.cfg.max_new_tokens
        out: list[str | None] = [None] * len(prompts)
        with self._lock, torch.inference_mode():
            gen_cfg = copy.deepcopy(self.model.generation_config)
            gen_cfg.do_sample = False
            gen_cfg.num_beams = 1
            for attr in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
                if hasattr(gen_cfg, attr):
                    setattr(gen_cfg, attr, None)
            gen_cfg.max_new_tokens = limit
            gen_cfg.pad_token_id = self.pad_id
            rendered = [self.render_prompt(p) for p in prompts]
            for batch in length_batches(rendered, self.cfg.batch_size):
                inputs = self._encode([rendered[i] for i in batch], padding_side="left")
                seqs = self.model.generate(**inputs, generation_config=gen_cfg)
                new = seqs[:, inputs["input_ids"].shape[1] :]
                for i, text in zip(batch, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                    out[i] = text.strip()
        return out

    def score_labels(self, prompts: list[Prompt], labels: list[str]) -> list[dict[str, LabelScore]]:
        if not labels:
            raise ValueError("score_labels needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels: {labels}")
        if any(not lab for lab in labels):
            raise ValueError("empty label")
        torch = self._torch
        results: list[dict[str, LabelScore] | None] = [None] * len(prompts)
        with self._lock, torch.inference_mode():
            rendered = [self.render_prompt(p) for p in prompts]
            for batch in length_batches(rendered, self.cfg.batch_size):
                part = [rendered[i] for i in batch]
                if not self._verified and self.scoring_mode == "kv":
                    self._verify_kv_route(part[0], labels)
                scored = self._score_kv(part, labels) if self.scoring_mode == "kv" else self._score_full(part, labels)
                for i, row in zip(batch, scored):
                    results[i] = row
        return results

    def apply_adapter(self, path: str | os.PathLike) -> None:
        """Load LoRA adapters (a PEFT adapter folder, e.g. from ``dfer finetune``) onto the loaded model and merge
        them into its weights, so scoring and generation run at the base model's speed. Checking that the
        adapter was made for this base model is the caller's job (:mod:`pipeline.backends.adapter`)."""
        try:
            from peft import PeftModel
        except ImportError as exc:  # pragma: no cover - peft is a dependency
            raise ModelLoadError("applying an adapter needs the 'peft' package") from exc
        with self._lock:
            try:
                with quiet_peft():
                    peft_model = PeftModel.from_pretrained(self.model, str(path), is_trainable=False)
            except Exception as exc:
                raise ModelLoadError(f"adapter {str(path)!r} cannot be loaded onto model {self.cfg.model!r}: {exc}") from exc
            self.model = peft_model.merge_and_unload()
            self.model.eval()
            self._verified = False  # re-check the cached scoring route on the adapted model

    # ------------------------------------------------------------------ rendering and encoding
    def render_prompt(self, prompt: Prompt) -> Rendered:
        """The prompt as the model's chat template renders it (one user turn, generation prompt added): text with
        the template's image placeholders, and the prepared images in order. Every scoring route, and
        fine-tuning, feeds the processor this."""
        messages, images, videos = chat_messages(prompt, self.cfg.image_max_side, self._video, self.cfg.model)
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return Rendered(text=text, images=images, videos=videos)

    def _add_special(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _encode(self, rendered: list[Rendered], padding_side: str, extra_text: list[str] | None = None):
        """Run the processor on a batch; ``extra_text`` is appended to each rendered prompt."""
        texts = [r.text + (extra_text[i] if extra_text else "") for i, r in enumerate(rendered)]
        kwargs = dict(
            text=texts,
            return_tensors="pt",
            padding=True,
            padding_side=padding_side,
            add_special_tokens=self._add_special(texts[0]),
        )
        if any(r.images for r in rendered):
            kwargs["images"] = [r.images for r in rendered]
        videos = [v for r in rendered for v in r.videos]
        if videos:  # frames as sampled (no resampling), fps measured from their timestamps
            kwargs.update(videos=[v.frames for v in videos], video_metadata=[video_metadata(v) for v in videos],
                          do_sample_frames=False)
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = padding_side
        try:
            inputs = self.processor(**kwargs)
        finally:
            self.tokenizer.padding_side = old_side
        if extra_text is None:  # each prompt's own token count, for count_prompt_tokens
            for r, n in zip(rendered, inputs["attention_mask"].sum(1).tolist()):
                key = r.identity()
                self._token_counts[key] = int(n)
                self._token_counts.move_to_end(key)
            while len(self._token_counts) > TOKEN_COUNTS_KEPT:
                self._token_counts.popitem(last=False)
        model_dtype = self.model.dtype
        out = {}
        for k, v in inputs.items():
            if hasattr(v, "to"):
                v = v.to(self.input_device)
                if v.is_floating_point():
                    v = v.to(model_dtype)
            out[k] = v
        return out


__all__ = ["TransformersBackend", "device_map_for", "processor_takes_video", "resolve_dtype", "video_metadata"]
