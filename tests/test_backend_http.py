"""OpenAI-compatible HTTP backend against a real local HTTP server that serves a tiny transformers model."""

from __future__ import annotations

import base64
import io
import math
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.backends import ModelConfig, Prompt, check_model_available, load_backend, model_identity
from pipeline.backends.openai_http import (
    OpenAIBackend, check_label_first_tokens, image_to_data_url, match_top_tokens, normalise_token,
)
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


def _logsumexp(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def test_scores_agree_with_hf_first_token(server, hf_backend):
    tok = hf_backend.tokenizer
    vocab = len(tok)
    client = _client(server.url, top_logprobs=vocab)  # the whole distribution comes back
    prompts = _prompts(2)
    got = client.score_labels(prompts, LABELS)
    local = [_as_server_sees(p) for p in prompts]
    lp = next_token_logprobs(hf_backend, local)
    exact = hf_backend.score_labels(local, LABELS)
    texts = [normalise_token(tok.decode([i])) for i in range(lp.shape[1])]
    for i in range(len(prompts)):
        for label in LABELS:
            # the heuristic over the full vocabulary: longest token text that is a prefix of the label,
            # all its spelling variants added up
            best = max(len(t) for t in texts if t and label.startswith(t))
            expected = _logsumexp([float(lp[i, v]) for v, t in enumerate(texts) if t and len(t) == best and label.startswith(t)])
            s = got[i][label]
            assert s.exact and s.n_tokens == 1
            assert s.logprob == pytest.approx(expected, abs=1e-4)
            # the hf backend's own first-token log-prob is one of the variants added up
            first_tok = hf_backend._label_tokens(hf_backend.render_prompt(local[i]).text, [label])[0].ids[0]
            assert s.logprob >= float(lp[i, first_tok]) - 1e-5
            if exact[i][label].n_tokens == 1:
                assert s.logprob >= exact[i][label].logprob - 1e-5
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
        true_first = hf_backend.score_labels([_as_server_sees(prompt)], [lab])[0][lab]
        if true_first.n_tokens == 1:
            assert true_first.logprob <= got[lab].logprob + 1e-5
    client.close()


def test_generate_and_count_tokens_through_server(server, hf_backend):
    client = load_backend(_cfg(server.url, max_concurrency=2))
    prompts = _prompts(3)
    out = client.generate(prompts, max_new_tokens=5)
    assert out == hf_backend.generate([_as_server_sees(p) for p in prompts], max_new_tokens=5)
    n = client.count_prompt_tokens(prompts[0])
    assert n == hf_backend.count_prompt_tokens(_as_server_sees(prompts[0]))
    body = server.requests_seen[0]
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
        with pytest.raises(LabelScoringUnsupportedError, match="cannot score labels") as err:
            client.score_labels(_prompts(1), LABELS)
        assert "vLLM" in str(err.value) and srv.url in str(err.value)
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


def test_match_top_tokens_heuristic():
    top = [(" Happy", -0.5), ("happy", -1.5), ("sa", -2.0), ("\u0120sad", -2.5), ("a", -3.0), (" ", -3.5)]
    got = match_top_tokens(top, ["happy", "sad", "anger", "fear"])
    assert got["happy"].logprob == pytest.approx(_logsumexp([-0.5, -1.5]))
    assert got["sad"].logprob == pytest.approx(-2.5)  # the longest matching text wins over "sa"
    assert got["anger"].logprob == pytest.approx(-3.0) and got["anger"].exact  # documented limit: "a" matches
    assert not got["fear"].exact and got["fear"].logprob == pytest.approx(-3.5)
    assert all(s.n_tokens == 1 for s in got.values())


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
    assert "server" in check_label_first_tokens(_cfg(server.url), mafw)  # distinct here: accepted
    # renaming the clashing class (the official word kept as an alias) is the documented fix
    assert check_label_first_tokens(_cfg(server.url), mafw + ["letdown"])
    with pytest.raises(LabelScoringUnsupportedError, match="'helplessness' and 'helpless'"):
        check_label_first_tokens(_cfg(server.url), mafw + ["helpless"])


def test_without_a_server_tokenizer_a_local_copy_is_used(hf_backend):
    folder = shared_tiny_model_dir("qwen2vl")
    with FakeOpenAIServer(hf_backend, model_name=folder, tokenize=False) as srv:
        cfg = ModelConfig(model=folder, backend="openai", server_url=srv.url)
        from pipeline.eval.labels import load_label_set

        source = check_label_first_tokens(cfg, load_label_set("mafw").names)
        assert "local copy" in source and srv.tokenize_requests == 0
        with pytest.raises(LabelScoringUnsupportedError, match="'disappointment' and 'dismay'.*local copy"):
            check_label_first_tokens(cfg, load_label_set("mafw").names + ["dismay"])


def test_without_any_tokenizer_labels_with_the_same_first_letters_are_refused(hf_backend):
    from pipeline.eval.labels import load_label_set

    with FakeOpenAIServer(hf_backend, tokenize=False) as srv:
        cfg = _cfg(srv.url)
        with pytest.raises(LabelScoringUnsupportedError, match="offers no /tokenize") as err:
            check_label_first_tokens(cfg, load_label_set("mafw").names)
        assert "'anger' and 'anxiety'" in str(err.value) and "'disgust' and 'disappointment'" in str(err.value)
        assert "spelling" in check_label_first_tokens(cfg, load_label_set("dfew").names)  # sad / surprise: fine
