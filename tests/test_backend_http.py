"""OpenAI-compatible HTTP backend against a real local HTTP server that serves a tiny transformers model and returns
token text only (no token ids, no vLLM extensions: tests/fake_openai_server.py); the same backend against a real vLLM
server is in tests/test_scoring_servers.py."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.backends import ModelConfig, Prompt, check_model_available, load_backend, model_identity
from pipeline.backends.openai_http import OpenAIBackend, image_to_data_url
from pipeline.backends.openai_scoring import LabelTokens, ScoringPlan, label_tokens
from pipeline.core.errors import BackendRequestError, LabelScoringUnsupportedError, ModelLoadError, ModelUnavailableError
from tests.fake_openai_server import FakeOpenAIServer, next_token_logprobs
from tests.tiny_models import shared_tiny_model_dir

LABELS = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear", "helplessness"]


@pytest.fixture(scope="module")
def hf_backend():
    b = load_backend(ModelConfig(model=shared_tiny_model_dir("qwen2vl"), batch_size=4))
    yield b
    b.close()


@pytest.fixture
def server(hf_backend):
    with FakeOpenAIServer(hf_backend, lifetime_s=60) as srv:
        yield srv


def _cfg(url: str, **kw) -> ModelConfig:
    return ModelConfig(model="tiny-vlm", backend="openai", server_url=url, **kw)


def _client(url: str, **kw) -> OpenAIBackend:
    top = kw.pop("top_logprobs", 20)
    return OpenAIBackend(_cfg(url, **kw), top_logprobs=top, backoff_base_s=0.01, backoff_cap_s=0.05)


def _prompts(n=2, seed=0):
    rng = np.random.default_rng(seed)
    img = lambda: Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))  # noqa: E731
    return [Prompt([img(), img(), f"Clip {i}: which emotion is shown? Answer with one word."]) for i in range(n)]


def _as_server_sees(prompt: Prompt) -> Prompt:
    """The same prompt with each image JPEG round-tripped exactly as the client sends it."""
    parts = []
    for p in prompt.parts:
        if isinstance(p, str):
            parts.append(p)
        else:
            data = base64.b64decode(image_to_data_url(p).split(",", 1)[1])
            parts.append(Image.open(io.BytesIO(data)).convert("RGB"))
    return Prompt(parts, system=prompt.system)


def _first_ids(tok, label):
    return {tok(form, add_special_tokens=False)["input_ids"][0] for form in (label, " " + label)}


def test_scores_are_the_labels_own_first_tokens_found_by_their_text(server, hf_backend):
    tok = hf_backend.tokenizer
    client = _client(server.url, top_logprobs=len(tok))  # the whole distribution comes back
    prompts = _prompts(2)
    got = client.score_labels(prompts, LABELS)
    assert client.scoring_plan(LABELS, prompts[0]).rule == "top-k token text"  # this server returns no token ids
    assert "text of the label's first tokens" in client.scoring_note(LABELS)
    lp = next_token_logprobs(hf_backend, [_as_server_sees(p) for p in prompts])
    for i in range(len(prompts)):
        for label in LABELS:
            # the larger of the label's two first tokens (bare, after a space), and nothing else: no token that merely
            # begins like the label ('he' for helplessness), no other spelling
            expected = max(float(lp[i, t]) for t in _first_ids(tok, label))
            s = got[i][label]
            assert s.exact and s.n_tokens == 1
            assert s.logprob == pytest.approx(expected, abs=1e-4), label
    client.close()


def test_top_k_misses_are_upper_bounds(server, hf_backend):
    client = _client(server.url, top_logprobs=5)
    prompt = _prompts(1, seed=4)[0]
    got = client.score_labels([prompt], LABELS)[0]
    lp = next_token_logprobs(hf_backend, [_as_server_sees(prompt)])[0]
    fifth = float(lp.topk(5).values[-1])
    misses = [lab for lab in LABELS if not got[lab].exact]
    assert misses, "with k=5 over a ~1000-token vocabulary most labels are absent"
    for lab in misses:
        assert got[lab].logprob == pytest.approx(fifth, abs=1e-4)
        assert max(float(lp[t]) for t in _first_ids(hf_backend.tokenizer, lab)) <= got[lab].logprob + 1e-5
    client.close()


def test_generate_and_count_tokens_through_server(server, hf_backend):
    client = load_backend(_cfg(server.url, max_concurrency=2))
    prompts = _prompts(3)
    out = client.generate(prompts, max_new_tokens=5)
    assert out == hf_backend.generate([_as_server_sees(p) for p in prompts], max_new_tokens=5)
    n = client.count_prompt_tokens(prompts[0])
    assert n == hf_backend.count_prompt_tokens(_as_server_sees(prompts[0]))
    body = server.requests_seen[0]
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body  # OpenAI's current name for the limit
    assert server.requests_seen[-1]["max_completion_tokens"] == 1
    content = body["messages"][-1]["content"]
    assert [c["type"] for c in content] == ["image_url", "image_url", "text"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert body["temperature"] == 0
    assert model_identity(client.cfg) == {"backend": "openai", "model": "tiny-vlm"}  # no URL in cache keys
    client.close()


def test_results_keep_prompt_order_under_concurrency(server):
    client = _client(server.url, max_concurrency=4)
    prompts = _prompts(6, seed=2)
    many = client.score_labels(prompts, ["happy", "sad"])
    one_by_one = [client.score_labels([p], ["happy", "sad"])[0] for p in prompts]
    assert [m["happy"].logprob for m in many] == pytest.approx([o["happy"].logprob for o in one_by_one], abs=1e-6)
    client.close()


@pytest.mark.parametrize("status,retry_after", [(429, "0"), (503, None)])
def test_transient_errors_are_retried(hf_backend, status, retry_after):
    with FakeOpenAIServer(hf_backend, fail_first=2, fail_status=status, retry_after=retry_after) as srv:
        client = _client(srv.url, max_retries=3)
        out = client.score_labels(_prompts(1), ["happy"])
        assert out[0]["happy"].logprob <= 0
        assert srv.failures_sent == 2 and len(srv.requests_seen) == 3
        client.close()


def test_retries_give_up_with_clear_error(hf_backend):
    with FakeOpenAIServer(hf_backend, fail_first=10, fail_status=503) as srv:
        client = _client(srv.url, max_retries=2)
        with pytest.raises(BackendRequestError, match="503"):
            client.generate(_prompts(1))
        assert len(srv.requests_seen) == 3
        client.close()


def test_client_errors_are_not_retried(server):
    client = OpenAIBackend(ModelConfig(model="other-model", backend="openai", server_url=server.url), backoff_base_s=0.01)
    with pytest.raises(BackendRequestError, match="404"):
        client.generate(_prompts(1))
    assert len(server.requests_seen) == 1
    client.close()


def test_server_without_logprobs_cannot_score(hf_backend):
    with FakeOpenAIServer(hf_backend, logprobs=False) as srv:
        client = _client(srv.url)
        with pytest.raises(LabelScoringUnsupportedError, match="without any log-probabilities") as err:
            client.score_labels(_prompts(1), LABELS)
        assert "vLLM" in str(err.value) and srv.url in str(err.value) and "'tiny-vlm'" in str(err.value)
        assert "classify.answer=generate" in str(err.value)
        assert len(srv.requests_seen) == 1  # found out once, not at every prompt
        client.close()


def test_check_model_available(server):
    check_model_available(_cfg(server.url))
    with pytest.raises(ModelUnavailableError, match="tiny-vlm"):
        check_model_available(ModelConfig(model="not-served", backend="openai", server_url=server.url))


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


def test_server_down_raises_model_load_error_naming_url():
    url = _closed_port_url()
    with pytest.raises(ModelLoadError, match=url.replace(".", r"\.")):
        check_model_available(_cfg(url))
    client = _client(url, max_retries=1)
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        client.generate(_prompts(1))
    client.close()


def test_missing_server_url():
    with pytest.raises(ModelLoadError, match="server_url"):
        load_backend(ModelConfig(model="m", backend="openai"))


def test_a_token_that_only_begins_like_a_label_never_counts_for_it():
    """The answers of a real vLLM run of issue 22 had ' D', 'a', ' F' and 'happiness' among their top tokens: none of
    them is a label's first token, so none counts for a label (string prefixes once made them disgust, angry, fear)."""
    labels = ["happy", "disgust", "angry", "fear"]
    tokens = LabelTokens({lab: (10 * i, 10 * i + 1) for i, lab in enumerate(labels, 1)},
                         {lab: (lab, " " + lab) for lab in labels}, "a test tokenizer")
    answer = {"choices": [{"logprobs": {"content": [{"token": " D", "logprob": -0.1, "top_logprobs": [
        {"token": " D", "logprob": -0.1}, {"token": "a", "logprob": -1.0}, {"token": " F", "logprob": -2.0},
        {"token": "happiness", "logprob": -3.0}, {"token": " angry", "logprob": -4.0}, {"token": "Disgust", "logprob": -5.0}]}]}}]}
    got = ScoringPlan(tokens, "top-k token text", 6).read(answer, "test")
    assert {lab: (s.logprob, s.exact) for lab, s in got.items()} == {
        "happy": (-5.0, False), "disgust": (-5.0, False), "angry": (-4.0, True), "fear": (-5.0, False)}
    by_id = {"choices": [{"logprobs": {"content": [{"token": "token_id:7", "logprob": -0.1, "top_logprobs": [
        {"token": "token_id:7", "logprob": -0.1}, {"token": "token_id:21", "logprob": -0.5},
        {"token": "token_id:30", "logprob": -0.7}, {"token": "token_id:31", "logprob": -0.6}]}]}}]}
    got = ScoringPlan(tokens, "top-k token ids", 4).read(by_id, "test")
    assert {lab: (s.logprob, s.exact) for lab, s in got.items()} == {
        "happy": (-0.7, False), "disgust": (-0.5, True), "angry": (-0.6, True), "fear": (-0.7, False)}


# ------------------------------------------------------------------------------------------------ first-token ties

# MAFW's eleven classes (official names, aliases and ids) plus one more, 'dismay': the tiny tokenizer keeps every MAFW
# word but helplessness and disappointment whole and splits 'disappointment' and 'dismay' after 'dis', as real
# tokenizers split rarer words, so these two share their first token and first-token scoring cannot tell them apart.
MAFW_LIKE = (Path(__file__).resolve().parent.parent / "prompts" / "labels" / "mafw.yaml").read_text() + (
    "  - name: dismay\n    aliases: [dismayed, \"12\"]\n")


def test_labels_sharing_a_first_token_are_refused_before_any_clip(server, clip_dir, tmp_path):
    from stages.modelstage import PreflightError
    from tests.runs import run

    labels = tmp_path / "mafw_like.yaml"
    labels.write_text(MAFW_LIKE)
    with pytest.raises(PreflightError) as err:
        run(clip_dir["root"], tmp_path / "run", tmp_path / "cache", "classify.model.backend=openai",
            "classify.model.model=tiny-vlm", f"classify.model.server_url={server.url}", f"classify.labels={labels}",
            "classify.use_summaries=false")
    msg = str(err.value)
    assert "'disappointment' and 'dismay'" in msg and "mafw_like.yaml" in msg
    assert "server" in msg and "aliases" in msg and "transformers backend" in msg
    assert "anger" not in msg.split("cannot tell these labels apart")[1].split("judged by")[0]  # only the real clash
    assert server.tokenize_requests > 0 and server.requests_seen == []  # asked the tokenizer, scored nothing
    assert not (tmp_path / "cache" / "faces").exists()  # before any clip


def test_first_tokens_come_from_the_servers_tokenizer(server, hf_backend):
    from pipeline.eval.labels import load_label_set

    mafw = load_label_set("mafw").names
    tok = hf_backend.tokenizer
    assert len({tok(lab, add_special_tokens=False)["input_ids"][0] for lab in mafw}) == len(mafw)
    tokens = label_tokens(_cfg(server.url), mafw)  # distinct here: accepted
    assert "server" in tokens.source and set(tokens.ids["happiness"]) == _first_ids(tok, "happiness")
    # renaming the clashing class (the official word kept as an alias) is the documented fix
    assert label_tokens(_cfg(server.url), mafw + ["letdown"]).tokenized
    with pytest.raises(LabelScoringUnsupportedError, match="'helplessness' and 'helpless'"):
        label_tokens(_cfg(server.url), mafw + ["helpless"])


def test_without_a_server_tokenizer_a_local_copy_is_used(hf_backend):
    folder = shared_tiny_model_dir("qwen2vl")
    with FakeOpenAIServer(hf_backend, model_name=folder, tokenize=False) as srv:
        cfg = ModelConfig(model=folder, backend="openai", server_url=srv.url)
        from pipeline.eval.labels import load_label_set

        tokens = label_tokens(cfg, load_label_set("mafw").names)
        assert "local copy" in tokens.source and srv.tokenize_requests == 0 and tokens.tokenized
        with pytest.raises(LabelScoringUnsupportedError, match="'disappointment' and 'dismay'.*local copy"):
            label_tokens(cfg, load_label_set("mafw").names + ["dismay"])


def test_without_any_tokenizer_a_label_is_found_only_as_a_whole_token_and_the_rule_says_so(hf_backend):
    with FakeOpenAIServer(hf_backend, tokenize=False) as srv:
        client = _client(srv.url, top_logprobs=len(hf_backend.tokenizer))
        prompt = _prompts(1)[0]
        plan = client.scoring_plan(LABELS, prompt)
        assert plan.rule == "top-k whole-label text" and not plan.tokens.tokenized
        assert client.scoring_note(LABELS).startswith("fallback: a top-") and "offers no /tokenize" in client.scoring_note(LABELS)
        got = client.score_labels([prompt], LABELS)[0]
        # every label but helplessness is one token here, so it is found; helplessness never is
        assert [lab for lab in LABELS if not got[lab].exact] == ["helplessness"]
        lp = next_token_logprobs(hf_backend, [_as_server_sees(prompt)])[0]
        assert got["sad"].logprob == pytest.approx(max(float(lp[t]) for t in _first_ids(hf_backend.tokenizer, "sad")), abs=1e-4)
        client.close()


@pytest.mark.parametrize("family", ["qwen2vl", "idefics3"])
def test_a_label_is_the_answer_as_the_chat_template_writes_it(family):
    """Where the chat template can be rendered (here: a local copy of the served model; vLLM renders it itself, see
    tests/test_vllm_engine.py), a label is the first token of the assistant's answer as the template writes it, the
    transformers backend's rule: bare after Qwen's ``assistant\\n``, after a space after Idefics3's ``Assistant:``.
    A server tokenizer that renders no chat leaves both forms."""
    folder = shared_tiny_model_dir(family)
    hf = load_backend(ModelConfig(model=folder))
    try:
        tok = hf.tokenizer
        bare, spaced = ({lab: tok(pre + lab, add_special_tokens=False)["input_ids"][0] for lab in LABELS[:7]}
                        for pre in ("", " "))
        with FakeOpenAIServer(hf, model_name=folder, tokenize=False) as srv:
            tokens = label_tokens(ModelConfig(model=folder, backend="openai", server_url=srv.url), LABELS[:7])
        assert tokens.source.endswith("the answer as its chat template writes it")
        assert tokens.ids == {lab: ((spaced if hf.label_separator == " " else bare)[lab],) for lab in LABELS[:7]}
        assert hf.label_separator == {"qwen2vl": "", "idefics3": " "}[family]
        with FakeOpenAIServer(hf, model_name=folder) as srv:
            tokens = label_tokens(ModelConfig(model=folder, backend="openai", server_url=srv.url), LABELS[:7])
            assert srv.tokenize_requests > 0
        assert "chat template" not in tokens.source
        assert tokens.ids == {lab: tuple(dict.fromkeys((bare[lab], spaced[lab]))) for lab in LABELS[:7]}
    finally:
        hf.close()
