"""Smoke tests of the real model servers dfer's ``openai`` backend talks to (tests/servers.py), on the tiny Qwen2-VL
built for vLLM (tests/tiny_models.py, ``qwen2vl-vllm``): what dfer relies on, checked on the servers themselves.

vLLM (CPU build): a chat completion with images answers ``logprobs``/``top_logprobs`` (with
``max_completion_tokens``) that agree with the same checkpoint run by transformers in this process; ``/tokenize`` at
the root gives the local tokenizer's ids; ``/v1/models`` names the model. ``transformers serve`` answers the same
request without any logprobs."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest

LABELS = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
QUESTION = "Which emotion is shown? Answer with one word from: " + ", ".join(LABELS) + "."


def noise_image(seed: int, size: tuple[int, int] = (16, 16)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: the server sees exactly the pixels the local model sees
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_body(model: str, images: list, k: int = 20, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    return {"model": model, "messages": [{"role": "user", "content": [*content, {"type": "text", "text": QUESTION}]}],
            "max_completion_tokens": 1, "logprobs": True, "top_logprobs": k, "temperature": 0, **extra}


def top_logprobs(answer: dict) -> list[dict]:
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == 1, content  # one answer token (max_completion_tokens=1)
    return content[0]["top_logprobs"]


@pytest.fixture(scope="module")
def local(vllm_tiny_model):
    """The same checkpoint in this process: transformers' processor and model."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(vllm_tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(vllm_tiny_model, dtype=torch.float32).eval()
    return processor, model


def local_inputs(processor, images: list):
    messages = [{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                             {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def test_vllm_names_the_served_model(vllm_server, vllm_tiny_model):
    status, answer = vllm_server.get("/v1/models")
    assert status == 200, answer
    assert [m["id"] for m in answer["data"]] == [vllm_tiny_model]
    assert answer["data"][0]["max_model_len"] == 4096


def test_vllm_tokenize_gives_the_local_tokenizer_ids(vllm_server, vllm_tiny_model, local):
    processor, _ = local
    tok = processor.tokenizer
    first_ids = set()
    for label in LABELS:
        for text in (label, " " + label):  # as the answer starts after Qwen's "assistant\n", and after a space
            status, answer = vllm_server.post("/tokenize", {"model": vllm_tiny_model, "prompt": text,
                                                            "add_special_tokens": False})
            assert status == 200, answer
            local_ids = tok(text, add_special_tokens=False)["input_ids"]
            assert answer["tokens"] == local_ids, text
            assert len(local_ids) == 1, f"{text!r} is {local_ids} in the tiny tokenizer, not one token"
            assert tok.decode(local_ids) == text
            first_ids.add(local_ids[0])
    assert len(first_ids) == 2 * len(LABELS)  # every label, bare or after a space, has a token of its own

    # the chat template: the server renders the same prompt, token for token
    messages = [{"role": "user", "content": QUESTION}]
    status, answer = vllm_server.post("/tokenize", {"model": vllm_tiny_model, "messages": messages,
                                                    "add_generation_prompt": True})
    assert status == 200, answer
    local_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert answer["tokens"] == list(local_ids)
    assert tok.decode(local_ids).endswith("<|im_start|>assistant\n")


def test_vllm_chat_with_images_returns_top_logprobs(vllm_server, vllm_tiny_model, local):
    processor, _ = local
    for images in ([noise_image(1)], [noise_image(2, (48, 40)), noise_image(3), noise_image(4, (20, 30))]):
        status, answer = vllm_server.post("/v1/chat/completions", chat_body(vllm_tiny_model, images))
        assert status == 200, answer
        top = top_logprobs(answer)
        values = [t["logprob"] for t in top]
        assert len(top) == 20
        assert values == sorted(values, reverse=True) and values[0] <= 0.0
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4
        chosen = answer["choices"][0]["logprobs"]["content"][0]
        assert chosen["token"] == top[0]["token"]  # temperature 0: the answer is the most likely token
        assert answer["usage"]["completion_tokens"] == 1
        # the server's prompt is the local processor's, image placeholders included (4 a 16x16 image)
        assert answer["usage"]["prompt_tokens"] == local_inputs(processor, images)["input_ids"].shape[1]

    # the image reaches the model: another image, another answer distribution
    first = top_logprobs(vllm_server.post("/v1/chat/completions", chat_body(vllm_tiny_model, [noise_image(1)]))[1])
    other = top_logprobs(vllm_server.post("/v1/chat/completions", chat_body(vllm_tiny_model, [noise_image(5)]))[1])
    assert [(t["token"], t["logprob"]) for t in first] != [(t["token"], t["logprob"]) for t in other]


def test_vllm_logprobs_agree_with_transformers_on_the_same_checkpoint(vllm_server, vllm_tiny_model, local):
    import torch

    processor, model = local
    for images in ([noise_image(11)], [noise_image(12), noise_image(13)]):
        body = chat_body(vllm_tiny_model, images, return_tokens_as_token_ids=True)
        status, answer = vllm_server.post("/v1/chat/completions", body)
        assert status == 200, answer
        served = {int(t["token"].removeprefix("token_id:")): t["logprob"] for t in top_logprobs(answer)}
        with torch.no_grad():
            logits = model(**local_inputs(processor, images)).logits[0, -1]
        mine = torch.log_softmax(logits.float(), dim=-1)
        ids = torch.topk(mine, 20).indices.tolist()
        assert set(served) == set(ids)
        for i in ids:
            assert served[i] == pytest.approx(mine[i].item(), abs=1e-4), processor.tokenizer.decode([i])


def test_vllm_label_token_logprobs_equal_the_transformers_backend_label_scores(vllm_server, vllm_tiny_model, local):
    """``logprob_token_ids`` (vLLM's way to ask for given tokens' logprobs whatever their rank) gives each label's
    first-token logprob; dfer's transformers backend scores the same prompt, each label one token, alike."""
    from pipeline.backends import ModelConfig, Prompt, load_backend

    processor, _ = local
    ids = {label: processor.tokenizer(label, add_special_tokens=False)["input_ids"] for label in LABELS}
    backend = load_backend(ModelConfig(model=vllm_tiny_model))
    try:
        for images in ([noise_image(21)], [noise_image(22), noise_image(23, (40, 24))]):
            body = chat_body(vllm_tiny_model, images, return_tokens_as_token_ids=True,
                             logprob_token_ids=[i for (i,) in ids.values()])
            del body["top_logprobs"]
            status, answer = vllm_server.post("/v1/chat/completions", body)
            assert status == 200, answer
            served = {int(t["token"].removeprefix("token_id:")): t["logprob"] for t in top_logprobs(answer)}
            [scores] = backend.score_labels([Prompt([*images, QUESTION])], LABELS)
            for label, (i,) in ids.items():
                assert scores[label].n_tokens == 1
                assert served[i] == pytest.approx(scores[label].logprob, abs=1e-4), label
    finally:
        backend.close()


def test_vllm_refuses_more_top_logprobs_than_its_cap(vllm_server, vllm_tiny_model):
    status, answer = vllm_server.post("/v1/chat/completions", chat_body(vllm_tiny_model, [noise_image(1)], k=21))
    assert status == 400
    assert "20" in str(answer) and "logprobs" in str(answer)


def test_transformers_serve_answers_without_logprobs(transformers_server, vllm_tiny_model):
    status, answer = transformers_server.get("/v1/models")
    assert status == 200, answer
    assert vllm_tiny_model in [m["id"] for m in answer["data"]]

    status, answer = transformers_server.post("/v1/chat/completions", chat_body(vllm_tiny_model, [noise_image(1)]))
    assert status == 200, answer
    choice = answer["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert answer["usage"]["completion_tokens"] == 1
    assert choice.get("logprobs") is None  # asked for, silently not given: what dfer must detect before any clip
    status, _ = transformers_server.post("/tokenize", {"model": vllm_tiny_model, "prompt": "happy"})
    assert status == 404
