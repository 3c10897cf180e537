"""Tiny, randomly initialised vision-language models for tests (no downloads, ever).

Each builder makes a real transformers checkpoint in a folder:

* ``make_tiny_qwen2vl(dir)``: ``Qwen2VLForConditionalGeneration`` from a ``Qwen2VLConfig`` with a
  2-layer text model and a 1-layer vision tower, and a real ``Qwen2VLProcessor``
  (``Qwen2VLImageProcessor`` + ``Qwen2VLVideoProcessor`` + tokenizer). Images are resized to at most
  16x16 pixels (patch 4, merge 2), so each image costs 4 placeholder tokens.
* ``make_tiny_qwen2vl_vllm(dir)``: the same Qwen2-VL (same tokenizer, processor and chat template) with a text
  model that vLLM's CPU build serves: its CPU attention needs a head size of at least 32 (hidden 64, 2 heads of 32,
  ``mrope_section`` [4, 6, 6] summing to half the head size). It loads in transformers too, so the two backends can
  be compared on one checkpoint. Not in ``FAMILIES`` (build it by name: ``"qwen2vl-vllm"``).
* ``make_tiny_qwen25vl(dir)``: the same for ``Qwen2_5_VLForConditionalGeneration`` (``Qwen2_5_VLProcessor``):
  Qwen2.5-VL turns a video's frame rate into the temporal spacing of its position ids, so it is the family on
  which the fps a video is given changes the scores. Not in ``FAMILIES`` (build it by name).
* ``make_tiny_idefics3(dir)``: ``Idefics3ForConditionalGeneration`` (SmolVLM layout: SigLIP-style vision
  tower, pixel-shuffle connector, Llama text model) with a real ``Idefics3Processor``
  (``Idefics3ImageProcessor``, no image splitting, 32x32 images, 4 ``<image>`` tokens per image).

The tokenizer is a byte-level BPE trained on the spot with the ``tokenizers`` library on a small
synthetic corpus, with the special tokens each processor and chat template needs. The corpus makes the
common emotion words single tokens (with and without a leading space) and deliberately leaves
``helplessness`` and ``disappointment`` out, so that they are split into several tokens: label scoring
has both single- and multi-token labels to exercise.

The chat templates are short Jinja templates written here in the format of the real models
(ChatML for Qwen2-VL: ``<|im_start|>assistant\\n``; SmolVLM/Idefics3: ``User:...<end_of_utterance>\\nAssistant:``).

Everything is seeded; the same call gives the same weights and the same vocabulary. The folder is
written with ``save_pretrained`` and is meant to be loaded back through ``AutoProcessor`` /
``AutoModelForImageTextToText`` (``pipeline.backends.load_backend(ModelConfig(model=dir))``), exactly as a
user's checkpoint would be.

``tiny_model_dir(family, root)`` builds a family once under ``root`` and returns the folder (it is safe to
call repeatedly, e.g. from a session-scoped pytest fixture). ``shared_tiny_model_dir(family)`` does the same
under one temporary folder per process (removed at exit), so several test modules share one build.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

FAMILIES = ("qwen2vl", "idefics3")

EMOTION_WORDS = [
    "happy", "sad", "neutral", "angry", "surprise", "disgust", "fear",
    "contempt", "anxiety", "happiness", "sadness", "anger", "surprised", "worried", "calm",
]
# Never in the corpus: these must come out as several tokens.
MULTI_TOKEN_WORDS = ["helplessness", "disappointment"]
FACE_WORDS = [
    "brows", "brow", "eyes", "eye", "mouth", "head", "raise", "raised", "smile", "smiles", "frown",
    "lips", "lip", "corner", "corners", "jaw", "drop", "nose", "wrinkle", "cheek", "cheeks", "blink",
    "tilt", "turn", "nod", "open", "closed", "wide", "tight", "pressed", "pulled", "up", "down",
    "left", "right", "inner", "outer", "upper", "lower", "slightly", "strongly", "face", "person",
    "video", "frame", "frames", "clip", "between", "keyframes", "motion", "summary", "help", "less",
    "ness", "dis", "appoint", "ment",
]
FILLER_WORDS = [
    "the", "a", "an", "is", "are", "and", "or", "of", "in", "to", "with", "this", "that", "what",
    "which", "answer", "one", "word", "from", "emotion", "shown", "describe", "label", "options",
    "you", "assistant", "user", "system", "helpful", "question", "image", "images", "then", "looks",
    "at", "for", "it", "be", "not", "no", "yes", "Assistant", "User", "System",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
IDEFICS3_SPECIAL_TOKENS = (
    ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
     "<global-img>"]
    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
)

# ChatML, as used by Qwen2-VL-Instruct: images become <|vision_start|><|image_pad|><|vision_end|> in order.
# Literal newlines are written as {{ '\n' }} so that Jinja whitespace control cannot eat them.
QWEN2VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# SmolVLM / Idefics3 format: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant: answer<end_of_utterance>\n".
# A role whose content starts with an image gets ":" alone, otherwise ": ".
IDEFICS3_CHAT_TEMPLATE = (
    "{{ '<|im_start|>' }}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}"
    "{%- if message['content'] is string -%}{{ ': ' + message['content'] }}"
    "{%- else -%}"
    "{%- if message['content'][0]['type'] == 'image' -%}{{ ':' }}{%- else -%}{{ ': ' }}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<image>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_utterance>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

_SEED = 1234
# Much larger than a real model's 0.02: a random tiny model then has peaked, input-dependent next-token
# distributions, so a wrong position id or mask in label scoring changes scores visibly (not by 1e-4).
_INIT_RANGE = 0.3
_lock = threading.Lock()


def _seed_everything(seed: int = _SEED) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _corpus(seed: int = _SEED) -> list[str]:
    """Synthetic sentences; single-token words appear often, with and without a leading space."""
    rng = random.Random(seed)
    frequent = EMOTION_WORDS + FACE_WORDS + FILLER_WORDS
    lines = []
    for word in frequent:
        # Bare (as after "assistant\n"), space-prefixed (as after "Assistant:"), capitalised.
        lines += [word, f" {word}", word.capitalize(), f" {word.capitalize()}", f"{word}\n", f"\n{word}"] * 6
    for _ in range(600):
        n = rng.randint(3, 10)
        lines.append(" ".join(rng.choice(frequent) for _ in range(n)) + rng.choice([".", ",", "?", "!", ":"]))
    lines += [": , . ? ! ( ) [ ] 0 1 2 3 4 5 6 7 8 9 - _ / ' \" ;"] * 20
    return lines


def train_tokenizer(special_tokens: list[str], vocab_size: int = 1000):
    """A GPT-2/Qwen-style byte-level BPE, trained on the synthetic corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def wrap_tokenizer(tok, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def _check_multi_token(tokenizer, prefix: str) -> None:
    for word in MULTI_TOKEN_WORDS:
        ids = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1, f"tiny tokenizer made {word!r} a single token"
    for word in ("happy", "sad", "neutral"):
        ids = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"tiny tokenizer split {prefix + word!r} into {ids}"


def make_tiny_qwen2vl(dir: str | os.PathLike) -> str:
    """Build a tiny random Qwen2-VL checkpoint + processor in ``dir``; return the folder as a string."""
    return _make_tiny_qwen(dir, "2")


def make_tiny_qwen2vl_vllm(dir: str | os.PathLike) -> str:
    """``make_tiny_qwen2vl`` with a text model that vLLM's CPU attention serves (head size 32); return the folder."""
    return _make_tiny_qwen(dir, "2", text_sizes=VLLM_TEXT_SIZES)


# vLLM's CPU attention backend takes head sizes of 32 and more; M-RoPE splits half the head size over
# (temporal, height, width), so mrope_section must sum to 16.
VLLM_TEXT_SIZES = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                       mrope_section=[4, 6, 6])
_TEXT_SIZES = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                   mrope_section=[1, 1, 2])


def make_tiny_qwen25vl(dir: str | os.PathLike) -> str:
    """Build a tiny random Qwen2.5-VL checkpoint + processor in ``dir``; return the folder as a string."""
    return _make_tiny_qwen(dir, "2.5")


def _make_tiny_qwen(dir: str | os.PathLike, version: str, text_sizes: dict | None = None) -> str:
    import torch
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    sizes = dict(text_sizes or _TEXT_SIZES)
    mrope_section = sizes.pop("mrope_section")
    hidden = sizes["hidden_size"]
    if version == "2":
        Config, Model, Processor = (transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration,
                                    transformers.Qwen2VLProcessor)
        vision_extra = dict(embed_dim=16, hidden_size=hidden, mlp_ratio=2)  # the merger projects to the text width
    else:
        Config, Model, Processor = (transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration,
                                    transformers.Qwen2_5_VLProcessor)
        # window attention over 2x2 merged patches of a 16x16 image; one full-attention block
        vision_extra = dict(hidden_size=16, out_hidden_size=hidden, intermediate_size=32, window_size=8,
                            fullatt_block_indexes=[0], tokens_per_second=4)

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything()
    tok = train_tokenizer(QWEN_SPECIAL_TOKENS)
    tokenizer = wrap_tokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.model_max_length = 4096
    _check_multi_token(tokenizer, "")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}

    # 16x16 pixels at most: patch 4 -> 4x4 patches -> merge 2 -> 2x2 = 4 image tokens per image.
    pix = dict(patch_size=4, temporal_patch_size=2, merge_size=2)
    image_processor = Qwen2VLImageProcessor(min_pixels=8 * 8, max_pixels=16 * 16, **pix)
    video_processor = Qwen2VLVideoProcessor(min_pixels=8 * 8, max_pixels=16 * 16, **pix)
    processor = Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )

    config = Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **sizes,
            num_hidden_layers=2,
            max_position_embeddings=4096,
            initializer_range=_INIT_RANGE,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1,
            num_heads=2,
            **vision_extra,
            in_channels=3,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            initializer_range=_INIT_RANGE,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Model(config).to(torch.float32).eval()
    _set_generation_config(model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


def make_tiny_idefics3(dir: str | os.PathLike) -> str:
    """Build a tiny random Idefics3 (SmolVLM-style) checkpoint + processor in ``dir``; return the folder."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything()
    tok = train_tokenizer(IDEFICS3_SPECIAL_TOKENS)
    tokenizer = wrap_tokenizer(
        tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|endoftext|>"
    )
    tokenizer.model_max_length = 4096
    _check_multi_token(tokenizer, " ")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIAL_TOKENS}

    # Vision: 32x32 images, patch 8 -> 16 patches -> pixel shuffle (scale 2) -> 4 <image> tokens.
    image_size, patch_size, scale_factor = 32, 8, 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            initializer_range=_INIT_RANGE,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<end_of_utterance>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=_INIT_RANGE,
        ),
        scale_factor=scale_factor,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config).to(torch.float32).eval()
    _set_generation_config(model, eos=ids["<end_of_utterance>"], pad=ids["<|endoftext|>"], bos=ids["<|im_start|>"])
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


def _set_generation_config(model, eos: int, pad: int, bos: int | None = None) -> None:
    gc = model.generation_config
    gc.eos_token_id = eos
    gc.pad_token_id = pad
    if bos is not None:
        gc.bos_token_id = bos
    gc.do_sample = False


_BUILDERS = {"qwen2vl": make_tiny_qwen2vl, "idefics3": make_tiny_idefics3, "qwen25vl": make_tiny_qwen25vl,
             "qwen2vl-vllm": make_tiny_qwen2vl_vllm}


def tiny_model_dir(family: str, root: str | os.PathLike) -> str:
    """Return ``root/<family>``, building the tiny model there first if it is not complete yet.

    Completion is marked by a ``.complete`` file written last, so an interrupted build is redone.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {sorted(_BUILDERS)}")
    target = Path(root) / family
    marker = target / ".complete"
    with _lock:
        if not marker.exists():
            _BUILDERS[family](target)
            marker.write_text(json.dumps({"family": family, "seed": _SEED}))
    return str(target)


_shared_root: str | None = None


def shared_tiny_model_dir(family: str) -> str:
    """``tiny_model_dir(family, <one temporary folder per process>)``; the folder is deleted at exit."""
    global _shared_root
    with _lock:
        if _shared_root is None:
            _shared_root = tempfile.mkdtemp(prefix="dfer-tiny-models-")
            atexit.register(shutil.rmtree, _shared_root, ignore_errors=True)
    return tiny_model_dir(family, _shared_root)
