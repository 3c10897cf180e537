"""Local transformers backend: ``AutoProcessor`` + ``AutoModelForImageTextToText``.

Loading
    A hub id and a local folder go through the same ``from_pretrained`` calls (``revision`` and
    ``trust_remote_code`` passed through). ``dtype``/``device`` become ``dtype=`` and an accelerate ``device_map``
    (``{"": "cpu"}``, ``{"": "cuda:1"}``, or ``"balanced"`` over all GPUs). Offline (``HF_HUB_OFFLINE=1``) or with
    the hub unreachable, loading is local-files-only and a model that is not cached raises
    :class:`ModelUnavailableError`; something that exists but is not an image-text-to-text checkpoint raises
    :class:`ModelLoadError`.

Prompts
    A :class:`Prompt` becomes one user message whose content lists ``{"type": "image"}``, ``{"type": "video"}`` and
    ``{"type": "text", ...}`` entries in the prompt's order (plus an optional system message), rendered with the
    model's own chat template and ``add_generation_prompt=True``. A :class:`Video` part goes to the processor's
    video processor as its frames, unsampled (``do_sample_frames=False``), with ``video_metadata`` giving the frame
    rate measured from the frames' timestamps (:func:`video_metadata`); a model whose processor has no video
    processor or whose chat template has no video slot raises :class:`VideoInputUnsupportedError`
    (:meth:`TransformersBackend.check_video` says so before any weights are loaded).

Label scoring (``score_labels``)
    The score of a label is ``log P(label tokens | prompt)`` summed over the label's tokens, from an fp32
    log-softmax.

    *Which tokens.* The label is scored as the assistant would write it, according to the model's chat template:
    at load time the template is rendered once with a generation prompt and once with an assistant turn holding a
    sentinel; whatever the template puts between the generation prompt and the assistant text is the
    *separator* (``""`` for ChatML/Qwen2-VL, whose prompt ends in ``<|im_start|>assistant\\n``; ``" "`` for
    Idefics3/SmolVLM, whose prompt ends in ``Assistant:``), and the first token after the assistant text is the
    *end-of-turn* token (``<|im_end|>``, ``<end_of_utterance>``). Label tokens are found as in lm-eval's
    ``_encode_pair``: encode ``prompt + separator + label``, check that the encoding of ``prompt`` is an exact
    prefix (a ``ValueError`` otherwise), and keep the rest.

    *How.* One forward pass over a right-padded batch of prompts (images encoded once per prompt) gives every
    label's first-token log-probability at each prompt's last real position (``logits_to_keep`` picks only those
    positions). The prompt KV cache is then repeated over the labels (``Cache.batch_repeat_interleave``) and all
    label continuations of all prompts run in a single batched forward pass: the attention mask is the prompt's
    padding mask followed by the continuation's, and position ids are given explicitly, continuing each prompt
    at its own length. For M-RoPE models (Qwen2-VL family) the prompt's 3-D positions come from the model's
    ``get_rope_index`` and the continuation starts at ``len + rope_delta`` on all three axes, so no stale
    ``rope_deltas`` state inside the model is used. The continuation pass scores the label's later tokens and the
    end-of-turn token after the full label (``LabelScore.end_logprob``). If repeating the cache would hold more
    than ``kv_token_budget`` cached tokens (prompts x labels x prompt length), the continuations run over a few
    prompts at a time (a sliced copy of the cache each), with identical scores.

    *Safety net.* The first time a backend scores, it also scores the first prompt the plain way (every
    ``prompt + label`` sequence in full) and compares; if the cached route disagrees (a model family whose
    positions or cache this code does not handle), it logs a warning and uses the plain route from then on.
    ``scoring_mode`` (``"kv"`` or ``"full"``) says which route is in use.

Fine-tuning and adapters
    :meth:`TransformersBackend.label_token_logprobs` is the plain route with gradients, one label per prompt:
    ``dfer finetune`` (``pipeline/finetune/``) takes its negative sum as the loss, so training and scoring read
    the same label tokens at the same positions. :meth:`TransformersBackend.apply_adapter` loads LoRA adapters
    onto the loaded model and merges them into its weights (``classify.adapter``).
"""

from __future__ import annotations

import copy
import gc
import inspect
import logging
import os
import threading
from dataclasses import dataclass, field

from pipeline.models import hub
from pipeline.backends.base import Backend, LabelScore, ModelConfig, Prompt, Video, prepare_image
from pipeline.models.quiet import quiet_peft
from pipeline.models.devices import resolve_device
from pipeline.core.errors import ModelLoadError, ModelUnavailableError, VideoInputUnsupportedError

log = logging.getLogger(__name__)

_SENTINEL = "\u2063DFER_LABEL_SENTINEL\u2063"


# --------------------------------------------------------------------------------------------- availability


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


_NO_VIDEO_SLOT = "its processor has no video processor or its chat template no video slot"


def _video_error(model: str, why: str) -> VideoInputUnsupportedError:
    return VideoInputUnsupportedError(
        f"model {model!r} cannot take video input ({why}); use classify.dense_input=images (the dense frames as "
        "images) or a model whose processor takes videos (Qwen2-VL, Qwen2.5-VL, ...)"
    )


# --------------------------------------------------------------------------------------------- helpers


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


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


@dataclass
class _Rendered:
    text: str
    images: list
    videos: list = field(default_factory=list)  # Video parts, frames prepared


@dataclass
class _LabelTokens:
    ids: list[int]
    end_id: int | None


# --------------------------------------------------------------------------------------------- backend


class TransformersBackend(Backend):
    """See the module docstring. Thread-safe (one lock around the model)."""

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
        self._verified = False
        self.label_separator, self.end_of_turn = self._analyse_template()

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        cfg = self.cfg
        source, common = hub.source(cfg.model, cfg.revision, trust_remote_code=cfg.trust_remote_code)
        local_only = common["local_files_only"]
        device_map, self.input_device = device_map_for(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.input_device)
        try:
            self.processor = AutoProcessor.from_pretrained(source, **common)
            self.model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, device_map=device_map, **common
            )
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
        self.model.eval()
        if self.input_device is None:  # device_map over several GPUs: inputs go where the embeddings are
            self.input_device = self.model.get_input_embeddings().weight.device
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

    def _analyse_template(self) -> tuple[str, str | None]:
        """Separator between generation prompt and answer, and the special token that ends the turn."""
        user = {"role": "user", "content": [{"type": "text", "text": "hello"}]}
        asst = {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}
        try:
            gen = self.processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
            full = self.processor.apply_chat_template([user, asst], add_generation_prompt=False, tokenize=False)
        except Exception as exc:
            raise ModelLoadError(f"Model {self.cfg.model!r}: its chat template cannot be rendered: {exc}") from exc
        sep, end = "", None
        if full.startswith(gen) and _SENTINEL in full[len(gen) :]:
            at = full.index(_SENTINEL, len(gen))
            sep = full[len(gen) : at]
            tail = full[at + len(_SENTINEL) :]
            special = sorted(
                (t for t in self.tokenizer.all_special_tokens + list(self.tokenizer.get_added_vocab()) if t),
                key=len,
                reverse=True,
            )
            end = next((t for t in special if tail.startswith(t)), None)
        else:
            log.warning(
                "model %s: the chat template's answer does not start right after its generation prompt; "
                "labels are scored directly after the generation prompt, with no end-of-turn score",
                self.cfg.model,
            )
        return sep, end

    # ------------------------------------------------------------------ public API
    @classmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        hub.check_available(cfg.model, cfg.revision)

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
            raise _video_error(cfg.model, f"its processor cannot be loaded: {type(exc).__name__}: {exc}") from exc
        if not processor_takes_video(processor):
            raise _video_error(cfg.model, _NO_VIDEO_SLOT)

    def close(self) -> None:
        with self._lock:
            for name in ("model", "processor", "tokenizer"):
                if hasattr(self, name):
                    delattr(self, name)
            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        with self._lock:
            r = self.render_prompt(prompt)
            inputs = self._encode([r], padding_side="right")
            return int(inputs["attention_mask"][0].sum())

    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        torch = self._torch
        limit = max_new_tokens or self.cfg.max_new_tokens
        out: list[str] = []
        with self._lock, torch.inference_mode():
            gen_cfg = copy.deepcopy(self.model.generation_config)
            gen_cfg.do_sample = False
            gen_cfg.num_beams = 1
            for attr in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
                if hasattr(gen_cfg, attr):
                    setattr(gen_cfg, attr, None)
            gen_cfg.max_new_tokens = limit
            gen_cfg.pad_token_id = self.pad_id
            for chunk in _chunks(prompts, self.cfg.batch_size):
                inputs = self._encode([self.render_prompt(p) for p in chunk], padding_side="left")
                seqs = self.model.generate(**inputs, generation_config=gen_cfg)
                new = seqs[:, inputs["input_ids"].shape[1] :]
                out += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return out

    def score_labels(self, prompts: list[Prompt], labels: list[str]) -> list[dict[str, LabelScore]]:
        if not labels:
            raise ValueError("score_labels needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels: {labels}")
        if any(not lab for lab in labels):
            raise ValueError("empty label")
        torch = self._torch
        results: list[dict[str, LabelScore]] = []
        with self._lock, torch.inference_mode():
            for chunk in _chunks(prompts, self.cfg.batch_size):
                rendered = [self.render_prompt(p) for p in chunk]
                if not self._verified and self.scoring_mode == "kv":
                    self._verify_kv_route(rendered[0], labels)
                if self.scoring_mode == "kv":
                    results += self._score_kv(rendered, labels)
                else:
                    results += self._score_full(rendered, labels)
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
    def render_prompt(self, prompt: Prompt) -> _Rendered:
        """The prompt as the model's chat template renders it (one user turn, generation prompt added): text with
        the template's image placeholders, and the prepared images in order. Every scoring route, and
        fine-tuning, feeds the processor this."""
        from PIL import Image

        content, images, videos = [], [], []
        for part in prompt.parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            elif isinstance(part, Image.Image):
                content.append({"type": "image"})
                images.append(prepare_image(part, self.cfg.image_max_side))
            elif isinstance(part, Video):
                if not self._video:
                    raise _video_error(self.cfg.model, _NO_VIDEO_SLOT)
                content.append({"type": "video"})
                frames = [prepare_image(f, self.cfg.image_max_side) for f in part.frames]
                videos.append(Video(frames, list(part.timestamps)))
            else:
                raise TypeError(f"prompt parts must be str, PIL.Image.Image or Video, got {type(part).__name__}")
        messages = []
        if prompt.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
        messages.append({"role": "user", "content": content})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return _Rendered(text=text, images=images, videos=videos)

    def _add_special(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _encode(self, rendered: list[_Rendered], padding_side: str, extra_text: list[str] | None = None):
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
        model_dtype = self.model.dtype
        out = {}
        for k, v in inputs.items():
            if hasattr(v, "to"):
                v = v.to(self.input_device)
                if v.is_floating_point():
                    v = v.to(model_dtype)
            out[k] = v
        return out

    def _label_tokens(self, prompt_text: str, labels: list[str]) -> list[_LabelTokens]:
        add = self._add_special(prompt_text)
        base = self.tokenizer(prompt_text, add_special_tokens=add)["input_ids"]
        end_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn) if self.end_of_turn else None
        out = []
        for label in labels:
            full = self.tokenizer(prompt_text + self.label_separator + label, add_special_tokens=add)["input_ids"]
            if full[: len(base)] != base:
                raise ValueError(
                    f"model {self.cfg.model}: the prompt's tokens are not a prefix of prompt+label tokens for label "
                    f"{label!r} (a token merges across the boundary); use a prompt whose generation prompt ends in a "
                    "special token or a newline"
                )
            ids = full[len(base) :]
            if not ids:
                raise ValueError(f"label {label!r} encodes to no tokens")
            out.append(_LabelTokens(ids=ids, end_id=end_id))
        return out

    # ------------------------------------------------------------------ scoring
    def _prefill(self, rendered: list[_Rendered], use_cache: bool = True):
        """Forward the right-padded prompts once. Returns (first-token logprobs (B,V) fp32, cache, inputs,
        next position (B,) for the first continuation token)."""
        torch = self._torch
        inputs = self._encode(rendered, padding_side="right")
        mask = inputs["attention_mask"]
        lens = mask.sum(1)
        extra = {}
        next_pos = lens.clone()
        self._position_rows = 0  # 0: plain 1-D positions; n: n-row multimodal positions (M-RoPE: 3)
        if self._rope_index is not None:
            params = inspect.signature(self._rope_index).parameters
            kw = {k: v for k, v in inputs.items() if k in params and k != "input_ids"}
            position_ids, deltas = self._rope_index(inputs["input_ids"], **kw)
            extra["position_ids"] = position_ids
            self._position_rows = position_ids.shape[0]
            # next text position = max position of the prompt + 1 = len + rope_delta (same on every axis)
            next_pos = lens + deltas.view(-1).to(lens.device)
        # logits_to_keep as a 1-D tensor of the distinct last positions: every transformers 5.x slices hidden states
        # with it alike ((B, K) rows); a per-row 2-D tensor is read as positions only since 5.2x (older releases
        # index with it and return 4-D logits)
        last = lens - 1
        kept = torch.unique(last)  # sorted
        keep = {"logits_to_keep": kept} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        out = self.model(**inputs, **extra, use_cache=use_cache, **keep)
        logits = out.logits
        column = torch.searchsorted(kept, last) if keep else last  # without logits_to_keep: every position's logits
        logits = torch.take_along_dim(logits, column.to(logits.device).view(-1, 1, 1), dim=1)[:, 0, :]
        first = torch.log_softmax(logits.float(), dim=-1)
        return first, (out.past_key_values if use_cache else None), inputs, next_pos

    def _score_kv(self, rendered: list[_Rendered], labels: list[str]) -> list[dict[str, LabelScore]]:
        toks = [self._label_tokens(r.text, labels) for r in rendered]
        first, cache, inputs, next_pos = self._prefill(rendered)
        B, L = len(rendered), len(labels)
        seqs = [t.ids + ([t.end_id] if t.end_id is not None else []) for row in toks for t in row]
        later = None  # (B*L, T, V) log-probs of the continuation positions
        if max(len(s) for s in seqs) > 1:
            # Repeating the prompt cache over labels costs B*L*P cached tokens; above the budget the
            # continuations run over a few prompts at a time (identical scores, less memory).
            P = inputs["attention_mask"].shape[1]
            per_pass = max(1, self.kv_token_budget // max(1, P * L))
            parts = []
            for a in range(0, B, per_pass):
                b = min(B, a + per_pass)
                part_cache = cache if b == B else copy.deepcopy(cache)  # the last part may consume the original
                if not (a == 0 and b == B):
                    part_cache.batch_select_indices(self._torch.arange(a, b, device=self.input_device))
                parts.append(
                    self._continue(part_cache, inputs["attention_mask"][a:b], next_pos[a:b], seqs[a * L : b * L], L)
                )
                del part_cache
            T = max(p.shape[1] for p in parts)
            later = parts[0] if len(parts) == 1 else self._torch.cat(
                [self._torch.nn.functional.pad(p, (0, 0, 0, T - p.shape[1])) for p in parts], 0
            )
        del cache

        def score(i: int, j: int, t: _LabelTokens) -> LabelScore:  # label j of prompt i: continuation row i*L + j
            r, lp = i * L + j, float(first[i, t.ids[0]])
            for k in range(1, len(t.ids)):
                lp += float(later[r, k - 1, t.ids[k]])
            end = float(later[r, len(t.ids) - 1, t.end_id]) if t.end_id is not None else None
            return LabelScore(logprob=lp, n_tokens=len(t.ids), exact=True, end_logprob=end)

        return [{label: score(i, j, toks[i][j]) for j, label in enumerate(labels)} for i in range(B)]

    def _continue(self, cache, prompt_mask, next_pos, seqs: list[list[int]], L: int):
        """One batched pass over the label continuations of some prompts. ``cache`` holds those prompts (one row
        each) and is repeated ``L`` times in place; row ``i*L + j`` continues prompt ``i`` with ``seqs[i*L + j]``.
        Returns fp32 log-probs ``(rows, T, V)``; position ``k`` predicts continuation token ``k + 1``."""
        torch = self._torch
        dev = self.input_device
        rows, T = len(seqs), max(len(s) for s in seqs)
        cont = torch.full((rows, T), self.pad_id, dtype=torch.long, device=dev)
        cmask = torch.zeros((rows, T), dtype=prompt_mask.dtype, device=dev)
        for r, seq in enumerate(seqs):
            cont[r, : len(seq)] = torch.tensor(seq, device=dev)
            cmask[r, : len(seq)] = 1
        cache.batch_repeat_interleave(L)
        attn = torch.cat([prompt_mask.repeat_interleave(L, 0), cmask], dim=1)
        pos = next_pos.repeat_interleave(L).view(-1, 1) + torch.arange(T, device=dev).view(1, -1)
        if self._position_rows:  # M-RoPE: text positions are equal on every axis
            pos = pos.unsqueeze(0).expand(self._position_rows, -1, -1)
        out = self.model(input_ids=cont, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True)
        return torch.log_softmax(out.logits.float(), dim=-1)

    def _score_full(self, rendered: list[_Rendered], labels: list[str]) -> list[dict[str, LabelScore]]:
        """Plain route: every ``prompt + separator + label (+ end-of-turn)`` sequence in full, one prompt at a
        time, its labels batched (right padding). Images are re-encoded once per label."""
        results = []
        for r in rendered:
            lps, n_tokens = self.label_token_logprobs([r] * len(labels), labels, include_end=True)
            rows = [(n, lps[j].tolist()) for j, n in enumerate(n_tokens)]
            results.append({label: LabelScore(logprob=sum(vals[:n]), n_tokens=n, exact=True,
                                              end_logprob=vals[n] if self.end_of_turn else None)
                            for label, (n, vals) in zip(labels, rows)})
        return results

    def label_token_logprobs(self, rendered: list[_Rendered], labels: list[str], include_end: bool = False, model=None):
        """Per-token log-probabilities of ``labels[i]`` written right after ``rendered[i]`` (one label per prompt).

        The label tokens are those :meth:`score_labels` scores (``prompt + label_separator + label``, checked as a
        prefix extension of the prompt's tokens); with ``include_end`` the end-of-turn token after the label is
        scored too. One forward pass over the right-padded batch; only the positions that predict label tokens
        reach the LM head (``logits_to_keep``) and the fp32 log-softmax. Gradients flow (no ``inference_mode``
        here; callers choose), so fine-tuning uses this for its loss: ``-logprobs.sum(1)`` is the negative of
        the score that ``classify`` stores. ``model`` replaces ``self.model`` for the forward pass (e.g. the
        accelerate/DDP-wrapped model being trained).

        Returns ``(logprobs, n_tokens)``: a ``(B, T)`` fp32 tensor whose row ``i`` holds the ``n_tokens[i]`` label
        tokens' log-probabilities (then the end-of-turn token's, if ``include_end`` and the template has one),
        zero-padded; and the label token counts.
        """
        torch = self._torch
        if len(rendered) != len(labels):
            raise ValueError(f"label_token_logprobs: {len(rendered)} prompts but {len(labels)} labels")
        seqs, n_tokens = [], []
        for r, label in zip(rendered, labels):
            t = self._label_tokens(r.text, [label])[0]
            end = [t.end_id] if include_end and t.end_id is not None else []
            seqs.append(t.ids + end)
            n_tokens.append(len(t.ids))
        tail = self.end_of_turn if include_end and self.end_of_turn else ""
        extra = [self.label_separator + lab + tail for lab in labels]
        inputs = self._encode(rendered, padding_side="right", extra_text=extra)
        lens = inputs["attention_mask"].sum(1).tolist()
        # logits at position p predict token p + 1: row i needs positions end - len(seq) - 1 .. end - 2
        wanted = [list(range(int(end) - len(seq) - 1, int(end) - 1)) for end, seq in zip(lens, seqs)]
        for j, (end, seq) in enumerate(zip(lens, seqs)):
            ids = inputs["input_ids"][j, int(end) - len(seq) : int(end)].tolist()
            if ids != seq:
                raise RuntimeError(f"label tokens misaligned for {labels[j]!r}: {ids} != {seq}")
        keep_pos = sorted({p for row in wanted for p in row})
        kwargs = {"use_cache": False}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = torch.tensor(keep_pos, device=self.input_device)
            column = {p: k for k, p in enumerate(keep_pos)}
        else:
            column = {p: p for p in keep_pos}
        logits = (model if model is not None else self.model)(**inputs, **kwargs).logits
        T = max(len(s) for s in seqs)
        out = torch.zeros((len(seqs), T), dtype=torch.float32, device=logits.device)
        for j, (row, seq) in enumerate(zip(wanted, seqs)):
            cols = torch.tensor([column[p] for p in row], device=logits.device)
            lp = torch.log_softmax(logits[j, cols].float(), dim=-1)
            target = torch.tensor(seq, device=logits.device).view(-1, 1)
            out[j, : len(seq)] = lp.gather(1, target).view(-1)
        return out, n_tokens

    def _verify_kv_route(self, rendered: _Rendered, labels: list[str]) -> None:
        """Score one prompt both ways once; fall back to the plain route if the cached one disagrees."""
        self._verified = True
        try:
            kv = self._score_kv([rendered], labels)[0]
        except Exception as exc:  # a family whose cache or positions this code cannot drive
            log.warning("model %s: cached label scoring failed (%s); using full-sequence scoring", self.cfg.model, exc)
            self.scoring_mode = "full"
            return
        full = self._score_full([rendered], labels)[0]
        # fp32: agreement is ~1e-6 when the route is right, and a one-position error moves scores by >0.1
        tol = 2e-3 if self.model.dtype == self._torch.float32 else 0.15
        worst = max(abs(kv[lab].logprob - full[lab].logprob) for lab in labels)
        if worst > tol:
            log.warning(
                "model %s: cached label scores differ from full-sequence scores by %.3g; using full-sequence "
                "scoring (slower, images re-encoded per label)",
                self.cfg.model,
                worst,
            )
            self.scoring_mode = "full"


def video_metadata(video: Video) -> dict:
    """transformers ``VideoMetadata`` fields for a :class:`Video`: its frames are the whole video, at the rate
    measured from their timestamps (``fps``; Qwen2.5-VL turns it into the temporal spacing of its positions)."""
    n = len(video.frames)
    span = video.timestamps[-1] - video.timestamps[0]
    fps = video.fps
    return {"total_num_frames": n, "fps": fps, "frames_indices": list(range(n)),
            "duration": span + (1.0 / fps if fps else 0.0)}


__all__ = ["TransformersBackend", "device_map_for", "processor_takes_video", "resolve_dtype", "video_metadata"]
