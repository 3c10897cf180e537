"""transformers backend on tiny random Qwen2-VL and Idefics3 checkpoints (built on the spot, loaded through the
Auto classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.backends import (
    ModelConfig,
    Prompt,
    Video,
    check_model_available,
    check_video_input,
    load_backend,
    model_identity,
)
from pipeline.backends.base import prepare_image
from pipeline.core.errors import ModelLoadError, ModelUnavailableError, VideoInputUnsupportedError
from tests.fake_openai_server import next_token_logprobs
from tests.tiny_models import FAMILIES, shared_tiny_model_dir

LABELS = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear", "helplessness", "disappointment"]
SEPARATOR = {"qwen2vl": "", "idefics3": " "}


def _img(rng, w=40, h=30):
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _prompts(seed=0):
    """Prompts of different lengths and image counts, so a batch needs padding."""
    rng = np.random.default_rng(seed)
    return [
        Prompt([_img(rng), _img(rng), "What emotion is shown? Answer with one word."]),
        Prompt(["Describe this face:", _img(rng, 50, 20)], system="Be brief."),
        Prompt(
            [_img(rng), "brows raised, mouth open;", _img(rng), _img(rng, 24, 24),
             "which emotion is shown in this video of a person? Answer with one word from the options."]
        ),
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def backend(request):
    b = load_backend(ModelConfig(model=shared_tiny_model_dir(request.param), batch_size=3))
    b.family = request.param
    yield b
    b.close()


def _direct_scores(b, prompt: Prompt, labels: list[str]) -> dict[str, tuple[float, int, float]]:
    """Reference: each ``prompt + label`` sequence alone, full forward pass, sum of the label tokens' log-probs.

    Written independently of the backend's scoring code: only the rendered prompt text and the processor and
    model are shared. Label tokens = processed(prompt + sep + label) minus processed(prompt), checked as prefix.
    """
    r = b.render_prompt(prompt)
    sep = SEPARATOR[b.family]
    images = [r.images] if r.images else None
    add = not r.text.startswith(b.tokenizer.bos_token or "\0")

    def encode(text):
        return b.processor(text=[text], images=images, return_tensors="pt", add_special_tokens=add)

    base = encode(r.text)["input_ids"][0].tolist()
    out = {}
    for label in labels:
        full_text = r.text + sep + label + b.end_of_turn
        inputs = encode(full_text)
        ids = inputs["input_ids"][0].tolist()
        assert ids[: len(base)] == base
        cont = ids[len(base) :]
        with torch.no_grad():
            logits = b.model(**inputs).logits[0].float()
        lps = torch.log_softmax(logits, dim=-1)
        vals = [float(lps[len(base) + k - 1, tok]) for k, tok in enumerate(cont)]
        # the last token is the end-of-turn token
        assert cont[-1] == b.tokenizer.convert_tokens_to_ids(b.end_of_turn)
        out[label] = (sum(vals[:-1]), len(cont) - 1, vals[-1])
    return out


def test_loads_through_auto_classes(backend):
    expected = {"qwen2vl": "Qwen2VLForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration"}
    assert type(backend.model).__name__ == expected[backend.family]
    assert type(backend.processor).__name__ in {"Qwen2VLProcessor", "Idefics3Processor"}
    ident = model_identity(backend.cfg)
    # a local checkpoint: its content fingerprint, no path (cache keys survive a move)
    assert ident == {"backend": "transformers", "local": ident["local"]} and ident["local"].startswith("local-sha256:")
    assert "/" not in json.dumps(ident)


def test_separator_and_end_of_turn_follow_chat_template(backend):
    assert backend.label_separator == SEPARATOR[backend.family]
    assert backend.end_of_turn == {"qwen2vl": "<|im_end|>", "idefics3": "<end_of_utterance>"}[backend.family]
    text = backend.render_prompt(Prompt(["hi"])).text
    toks = backend._label_tokens(text, ["happy", "helplessness"])
    pieces = [backend.tokenizer.convert_ids_to_tokens(t.ids) for t in toks]
    space = "\u0120" if backend.family == "idefics3" else ""
    assert pieces[0] == [space + "happy"]
    assert len(pieces[1]) > 1  # multi-token label


def test_batched_scores_equal_direct_computation(backend):
    prompts = _prompts()
    got = backend.score_labels(prompts, LABELS)  # one batch of 3 prompts of different lengths
    assert backend.scoring_mode == "kv"  # the cached route was used and passed its self-check
    assert len(got) == len(prompts)
    n_multi = 0
    for prompt, scores in zip(prompts, got):
        ref = _direct_scores(backend, prompt, LABELS)
        for label in LABELS:
            lp, n, end_lp = ref[label]
            s = scores[label]
            assert s.n_tokens == n and s.exact
            assert s.logprob == pytest.approx(lp, abs=1e-4), (label, s.logprob, lp)
            assert s.end_logprob == pytest.approx(end_lp, abs=1e-4)
            n_multi += n > 1
    assert n_multi >= 2 * len(prompts)
    # scores are not all alike (the tiny model is input-dependent), so the comparison above has teeth
    spread = [got[0][lab].logprob for lab in LABELS[:7]]
    assert max(spread) - min(spread) > 0.5


def test_scores_do_not_depend_on_batching(backend):
    prompts = _prompts(seed=1)
    together = backend.score_labels(prompts, LABELS)
    alone = [backend.score_labels([p], LABELS)[0] for p in prompts]
    for a, b in zip(together, alone):
        for label in LABELS:
            assert a[label].logprob == pytest.approx(b[label].logprob, abs=1e-4)


def test_memory_bounded_continuations_give_same_scores(backend):
    prompts = _prompts(seed=2)
    whole = backend.score_labels(prompts, LABELS)
    backend.kv_token_budget = 1  # forces one prompt per continuation pass (cache copied and sliced)
    try:
        parts = backend.score_labels(prompts, LABELS)
    finally:
        backend.kv_token_budget = 1 << 18
    for a, b in zip(whole, parts):
        for label in LABELS:
            assert a[label].logprob == pytest.approx(b[label].logprob, abs=1e-5)
            assert a[label].end_logprob == pytest.approx(b[label].end_logprob, abs=1e-5)


def test_lm_head_gets_one_position_per_prompt(backend):
    """Prompts of three lengths: the first-token logits come from each prompt's own last position only (the LM head
    gets 3 rows, not 3 prompts x 3 kept positions), and the scores are the direct computation's (above)."""
    prompts = _prompts()
    lengths = {backend.count_prompt_tokens(p) for p in prompts}
    assert len(lengths) == 3
    seen = []
    handle = backend.model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[:2])))
    try:
        backend.score_labels(prompts, LABELS)
    finally:
        handle.remove()
    assert seen[0] == (3, 1)  # the prefill; then the label continuations: 3 prompts x 9 labels rows
    assert seen[1][0] == 3 * len(LABELS)


def test_prompts_are_batched_by_length_and_answers_keep_their_order(backend):
    rng = np.random.default_rng(4)
    short = [Prompt([_img(rng), f"Which emotion? {'x ' * k}"]) for k in range(3)]
    long = [Prompt([_img(rng), _img(rng), _img(rng), f"Describe the brows. {'y ' * k}"]) for k in range(3)]
    mixed = [long[0], short[0], long[1], short[1], long[2], short[2]]
    backend.cfg.batch_size = 3
    batches = []
    encode = backend._encode
    backend._encode = lambda rendered, **kw: (batches.append(len(rendered[0].images)), encode(rendered, **kw))[1]
    try:
        got = backend.score_labels(mixed, LABELS[:3])
        answers = backend.generate(mixed, max_new_tokens=4)
    finally:
        backend._encode = encode
        backend.cfg.batch_size = 3
    assert batches == [1, 3, 1, 3]  # the one-image prompts together, then the three-image ones (score, generate)
    for prompt, row, answer in zip(mixed, got, answers):
        alone = backend.score_labels([prompt], LABELS[:3])[0]
        assert all(row[lab].logprob == pytest.approx(alone[lab].logprob, abs=1e-4) for lab in LABELS[:3])
        assert answer == backend.generate([prompt], max_new_tokens=4)[0]


def test_prompt_tokens_are_counted_once(backend):
    """count_prompt_tokens after scoring answers from the scoring batch (no second processor run), and equals a
    count of its own; another image of the same size is another prompt."""
    prompts = _prompts(seed=6)
    backend.score_labels(prompts, LABELS[:2])
    calls = []
    processor = backend.processor

    class Counting:  # the processor, counting its runs
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, **kw):
            calls.append(1)
            return processor(**kw)

    backend.processor = Counting()
    try:
        counted = [backend.count_prompt_tokens(p) for p in prompts]
        assert calls == []
        rng = np.random.default_rng(7)
        other = Prompt([_img(rng), _img(rng), prompts[0].parts[2]])
        assert backend.count_prompt_tokens(other) == counted[0] and calls == [1]
    finally:
        backend.processor = processor
    backend._token_counts.clear()
    assert [backend.count_prompt_tokens(p) for p in prompts] == counted


def test_generate_batch_of_multi_image_prompts(backend):
    prompts = _prompts()[:2]
    out = backend.generate(prompts, max_new_tokens=6)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # left padding is handled: batched greedy answers equal one-at-a-time answers
    assert out == [backend.generate([p], max_new_tokens=6)[0] for p in prompts]


def test_next_token_logprobs_match_first_label_token(backend):
    prompts = _prompts()
    lp = next_token_logprobs(backend, prompts)
    assert lp.shape[0] == len(prompts)
    scores = backend.score_labels(prompts, ["happy"])
    tok = backend._label_tokens(backend.render_prompt(prompts[0]).text, ["happy"])[0].ids[0]
    assert float(lp[0, tok]) == pytest.approx(scores[0]["happy"].logprob, abs=1e-4)


def test_count_prompt_tokens_grows_with_images(backend):
    rng = np.random.default_rng(3)
    counts = [backend.count_prompt_tokens(Prompt([_img(rng) for _ in range(k)] + ["Which emotion?"])) for k in range(4)]
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_image_max_side_downscales(backend):
    from pipeline.backends.base import prepare_image

    img = Image.new("RGBA", (400, 100))
    small = prepare_image(img, 64)
    assert small.mode == "RGB" and small.size == (64, 16)


def test_bad_prompt_part(backend):
    with pytest.raises(TypeError, match="str, PIL.Image.Image or Video"):
        backend.score_labels([Prompt([3.0])], ["happy"])


@pytest.mark.parametrize("family", ["qwen2vl", "idefics3", "qwen25vl"])
def test_attention_kernels_give_the_same_scores_and_answers(family):
    """attn_implementation is left out of the cache key because eager and SDPA attention give the same label scores
    (float32: within 1e-4) and the same greedy answers; a video prompt too where the family takes videos."""
    prompts = _prompts(seed=8)
    if family != "idefics3":
        prompts += _video_prompts(seed=8)
    got = {}
    for impl in ("eager", "sdpa"):
        b = load_backend(ModelConfig(model=shared_tiny_model_dir(family), batch_size=3, attn_implementation=impl))
        try:
            assert b.attn_implementation == impl and b.model.config.vision_config._attn_implementation == impl
            got[impl] = (b.score_labels(prompts, LABELS), b.generate(prompts, max_new_tokens=5), b.scoring_mode)
        finally:
            b.close()
    (eager, eager_text, mode_e), (sdpa, sdpa_text, mode_s) = got["eager"], got["sdpa"]
    assert mode_e == mode_s == "kv"
    worst = max(abs(e[lab].logprob - s[lab].logprob) for e, s in zip(eager, sdpa) for lab in LABELS)
    assert worst < 1e-4, worst
    assert max(e[lab].logprob for lab in LABELS for e in eager) - min(e[lab].logprob for lab in LABELS for e in eager) > 0.5
    assert eager_text == sdpa_text


def test_flash_attention_2_where_it_cannot_run_is_refused_naming_the_setting():
    cfg = ModelConfig(model=shared_tiny_model_dir("qwen2vl"), attn_implementation="flash_attention_2", device="cpu")
    import importlib.util

    why = "needs the flash-attn package" if importlib.util.find_spec("flash_attn") is None else "runs on CUDA GPUs only"
    with pytest.raises(ModelLoadError, match=f"attn_implementation=flash_attention_2 {why}.*attn_implementation=sdpa"):
        check_model_available(cfg)  # the pre-flight, before any weights are read
    with pytest.raises(ModelLoadError, match=f"attn_implementation=flash_attention_2 {why}"):
        load_backend(cfg)
    with pytest.raises(Exception, match="attn_implementation=sdpa is a setting of the transformers backend"):
        ModelConfig(model="served", backend="openai", server_url="http://127.0.0.1:9/v1", attn_implementation="sdpa")


def test_missing_local_path_raises_naming_it(tmp_path):
    missing = str(tmp_path / "no" / "such" / "checkpoint")
    cfg = ModelConfig(model=missing)
    with pytest.raises(ModelUnavailableError, match="no/such/checkpoint") as err:
        check_model_available(cfg)
    assert "--set" in str(err.value)
    with pytest.raises(ModelUnavailableError, match="no/such/checkpoint"):
        load_backend(cfg)


def test_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        check_model_available(ModelConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_backend(ModelConfig(model=str(tmp_path)))


def test_hub_id_offline_raises_unavailable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(model="dfer-tests/no-such-model-0123")
    with pytest.raises(ModelUnavailableError, match="dfer-tests/no-such-model-0123") as err:
        check_model_available(cfg)
    assert "classify.model.model=" in str(err.value) and "huggingface-cli download" in str(err.value)
    with pytest.raises(ModelUnavailableError, match="dfer-tests/no-such-model-0123"):
        load_backend(cfg)


def test_model_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        ModelConfig(model="x", temperature=0.3)


def test_local_fingerprint_tells_same_size_weights_apart(tmp_path):
    from pipeline.models.hub import fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    for d, byte in ((a, b"\x01"), (b, b"\x02")):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"\x00" * 3_000_000 + byte + b"\x00" * 10)
    assert fingerprint(a) != fingerprint(b)
    (b / "model.safetensors").write_bytes((a / "model.safetensors").read_bytes())
    assert fingerprint(a) == fingerprint(b)


# ------------------------------------------------------------------------------------------------ video input


@pytest.fixture(scope="module", params=["qwen2vl", "qwen25vl"])
def video_backend(request):
    b = load_backend(ModelConfig(model=shared_tiny_model_dir(request.param), batch_size=2))
    b.family = request.param
    yield b
    b.close()


def _video_prompts(seed=0, fps=5.0):
    """Prompts with a video (odd and even frame counts: Qwen pads to pairs of frames) and one with an image too."""
    rng = np.random.default_rng(seed)
    clip = lambda n: Video([_img(rng, 24, 24) for _ in range(n)], [0.4 + i / fps for i in range(n)])  # noqa: E731
    return [
        Prompt(["This video shows a face:", clip(5), "Which emotion? Answer with one word."]),
        Prompt([_img(rng), "then", clip(4), "which emotion is shown in this video of a person? Answer with one word."]),
    ]


def _direct_video_scores(b, prompt: Prompt, labels: list[str], fps: float) -> dict[str, float]:
    """Reference, as ``_direct_scores``: each ``prompt + label + end-of-turn`` in full through the processor (the
    video's frames as they are, told ``fps``) and the model; the sum of the label tokens' log-probs."""
    r = b.render_prompt(prompt)
    frames = [[prepare_image(f) for f in v.frames] for v in prompt.videos]
    meta = [{"total_num_frames": len(f), "fps": fps, "frames_indices": list(range(len(f)))} for f in frames]

    def encode(text):
        return b.processor(text=[text], images=[r.images] if r.images else None, videos=frames, video_metadata=meta,
                           do_sample_frames=False, return_tensors="pt")

    base = encode(r.text)["input_ids"][0].tolist()
    out = {}
    for label in labels:
        inputs = encode(r.text + label + b.end_of_turn)
        ids = inputs["input_ids"][0].tolist()
        assert ids[: len(base)] == base
        with torch.no_grad():
            lps = torch.log_softmax(b.model(**inputs).logits[0].float(), dim=-1)
        cont = ids[len(base) : -1]  # the label's tokens (the last one is the end of turn)
        out[label] = sum(float(lps[len(base) + k - 1, tok]) for k, tok in enumerate(cont))
    return out


def test_video_label_scores_equal_direct_computation(video_backend):
    b = video_backend
    prompts = _video_prompts()
    got = b.score_labels(prompts, LABELS)
    assert b.scoring_mode == "kv"  # the cached route passed its self-check on a video prompt
    for prompt, scores in zip(prompts, got):
        ref = _direct_video_scores(b, prompt, LABELS, fps=5.0)
        for label in LABELS:
            assert scores[label].logprob == pytest.approx(ref[label], abs=1e-4), (b.family, label)
    spread = [got[0][lab].logprob for lab in LABELS[:7]]
    assert max(spread) - min(spread) > 0.5


def test_video_frame_rate_comes_from_the_frames_timestamps(video_backend):
    """Qwen2.5-VL spaces a video's temporal positions by its fps: the scores of frames 0.2 s apart are those of a
    5 fps video and not those of the same frames told 25 fps (Qwen2-VL ignores fps: equal either way)."""
    b = video_backend
    prompt = _video_prompts(seed=3)[0]
    got = b.score_labels([prompt], LABELS[:4])[0]
    at5 = _direct_video_scores(b, prompt, LABELS[:4], fps=5.0)
    at25 = _direct_video_scores(b, prompt, LABELS[:4], fps=25.0)
    assert all(got[lab].logprob == pytest.approx(at5[lab], abs=1e-4) for lab in at5)
    moved = max(abs(at5[lab] - at25[lab]) for lab in at5)
    assert moved > 1e-2 if b.family == "qwen25vl" else moved < 1e-5


def test_video_frames_are_counted_and_generated_from():
    b = load_backend(ModelConfig(model=shared_tiny_model_dir("qwen2vl")))
    rng = np.random.default_rng(5)
    short = Prompt([Video([_img(rng) for _ in range(2)], [0.0, 0.2]), "Which emotion?"])
    long = Prompt([Video([_img(rng) for _ in range(8)], [0.2 * i for i in range(8)]), "Which emotion?"])
    assert b.count_prompt_tokens(long) > b.count_prompt_tokens(short)
    assert isinstance(b.generate([short, long], max_new_tokens=3)[1], str)
    b.close()


def test_model_without_video_input_is_refused_naming_it():
    folder = shared_tiny_model_dir("idefics3")  # Idefics3's processor has no video processor
    cfg = ModelConfig(model=folder)
    with pytest.raises(VideoInputUnsupportedError, match="idefics3.*dense_input=images"):
        check_video_input(cfg)  # before loading any weights
    check_video_input(ModelConfig(model=shared_tiny_model_dir("qwen2vl")))  # passes
    with pytest.raises(VideoInputUnsupportedError, match="openai"):
        check_video_input(ModelConfig(model="served", backend="openai", server_url="http://127.0.0.1:9/v1"))
    b = load_backend(cfg)
    rng = np.random.default_rng(0)
    with pytest.raises(VideoInputUnsupportedError, match="dense_input=images"):
        b.score_labels([Prompt([Video([_img(rng)] * 2, [0.0, 0.2]), "x"])], ["happy"])
    b.close()
