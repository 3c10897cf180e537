"""vLLM as dfer's engine for context and classify (issue 25, item 1), against the real vLLM CPU server
(tests/servers.py) serving the tiny Qwen2-VL (tests/tiny_models.py, ``qwen2vl-vllm``), compared with the same
checkpoint run by the transformers backend in this process, float32 on both sides.

What was measured on this fixture (8 synthetic face clips, 48 caption windows) before the tolerances were set:

* ``dfer run`` as a user runs it, the openai backend sending the face crops as JPEG (quality 95): every clip's
  predicted label the same; label log-probabilities at most 0.046 apart (the JPEG round trip: the server sees
  slightly different pixels); 32 of 48 window captions the same text, the others the same for their first 4 to 18
  tokens, then apart (greedy decoding of a random model, whose next tokens are nearly tied).
* The same prompts with the same pixels on both sides (the transformers backend given the crops as the server
  decodes them): label log-probabilities at most 2e-5 apart, and every window caption the same token for token (the
  texts differ only where transformers ends a caption cut mid-character with U+FFFD, which vLLM drops).
* Requests in flight (``model.max_concurrency``) are no part of the cache key and do not change a score.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from pipeline.backends import ModelConfig, Prompt, load_backend
from pipeline.backends.openai_http import image_to_data_url
from pipeline.engine.rundir import RunDir
from pipeline.eval.labels import load_label_set
from stages import context
from stages.faces.facetrack import FaceTrack
from stages.templates import PromptRenderer
from tests import media
from tests.runs import artifact, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DFEW = load_label_set("dfew").names
N_CLIPS = 8
AGREE = 0.99  # the share of clips whose predicted label must be the same on both engines
JPEG_TOL = 0.1  # nats; measured at most 0.046 (JPEG quality 95 on the way to the server)
SAME_PIXELS_TOL = 1e-3  # nats; measured at most 2e-5 (float32 on both sides, the same pixels)
FIRST_TOKENS = 3  # leading caption tokens equal on both engines through JPEG; measured 4 at least


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-engine-in")
    motions = ["pan", "static", "zoom", "pan_zoom"]
    rows = ["path,label"]
    for i in range(N_CLIPS):
        motion = motions[i % 4]
        media.make_face_clip(root / f"c{i}.mp4", motion=motion, seconds=1.6, seed=i,
                             expression=(0.4, 1.0) if motion == "static" else None)
        rows.append(f"c{i}.mp4,{DFEW[i % len(DFEW)]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def model(stage: str, name: str, server=None, *more: str) -> list[str]:
    sets = [f"{stage}.model.model={name}", *(f"{stage}.model.{m}" for m in more)]
    if server is not None:
        sets += [f"{stage}.model.backend=openai", f"{stage}.model.server_url={server.v1}"]
    return sets


@pytest.fixture(scope="module")
def runs(clips, vllm_server, vllm_tiny_model, tmp_path_factory):
    """Three runs sharing one cache: both stages on transformers; the same captions (cached) classified on vLLM; both
    stages on vLLM."""
    tmp, m = tmp_path_factory.mktemp("vllm-engine-runs"), vllm_tiny_model
    plans = {"transformers": [*model("context", m), *model("classify", m)],
             "vLLM classify": [*model("context", m), *model("classify", m, vllm_server)],
             "vLLM": [*model("context", m, vllm_server), *model("classify", m, vllm_server)]}
    out = {}
    for name, sets in plans.items():
        out[name] = run(clips, tmp / name, tmp / "cache", *sets, "run.fallback=stop")
        assert out[name].status == "complete" and out[name].n_failed == 0, name
    return out


def scores(res) -> dict[str, dict]:
    return {row["video"]: row for _, row in RunDir(res.run_dir).scores()}


def windows(res) -> dict[str, list[str]]:
    return {v: [w["caption"] for g in artifact(res, v, "context").json(context.CONTEXT_FILE)["gaps"] for w in g["windows"]]
            for v in res.keys}


def test_classify_on_vllm_agrees_with_the_transformers_backend(runs):
    here, served = scores(runs["transformers"]), scores(runs["vLLM classify"])
    assert sorted(here) == sorted(served) == [f"c{i}.mp4" for i in range(N_CLIPS)]
    same = sum(here[v]["prediction"] == served[v]["prediction"] for v in here)
    diffs = []
    for v in here:
        assert served[v]["scored"] == "exact" and served[v]["label_matching"].startswith("every label's first token")
        assert "as its chat template writes it" in served[v]["label_matching"]
        diffs += [abs(here[v]["raw"][lab]["logprob"] - served[v]["raw"][lab]["logprob"]) for lab in DFEW]
    print(f"vLLM vs transformers (JPEG to the server): same label on {same}/{len(here)} clips, "
          f"label log-probabilities at most {max(diffs):.2e} apart")
    assert same >= AGREE * len(here)
    assert max(diffs) <= JPEG_TOL
    # the prompt classify sent held the captions, the same on both (one cached context artifact)
    upstream = [{v: {s: k for s, k in keys.items() if s != "classify"} for v, keys in runs[name].keys.items()}
                for name in ("transformers", "vLLM classify")]
    assert upstream[0] == upstream[1] and all("context" in keys for keys in upstream[0].values())


def test_captions_on_vllm_begin_as_the_transformers_backend_s(runs, vllm_tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vllm_tiny_model)
    here, served = windows(runs["transformers"]), windows(runs["vLLM"])
    equal = total = 0
    for v in here:
        assert len(here[v]) == len(served[v]) > 0
        for a, b in zip(here[v], served[v]):
            total += 1
            equal += a.rstrip("\ufffd") == b.rstrip("\ufffd")
            ids_a, ids_b = (tok(s.rstrip("\ufffd"), add_special_tokens=False)["input_ids"] for s in (a, b))
            assert ids_a[:FIRST_TOKENS] == ids_b[:FIRST_TOKENS], (v, a, b)
    print(f"window captions through JPEG: {equal}/{total} the same text")
    assert total == 48


def sent_pixels(image: Image.Image) -> Image.Image:
    """The image as the server decodes what the openai backend sends."""
    return Image.open(io.BytesIO(base64.b64decode(image_to_data_url(image).split(",", 1)[1]))).convert("RGB")


def test_same_pixels_give_the_same_captions_and_label_scores(runs, vllm_server, vllm_tiny_model):
    """The caption prompts of the run's windows, with the crops the server decodes given to the transformers backend
    too: what is left is the engines' own difference."""
    res, cfg = runs["transformers"], context.Config(model={"model": vllm_tiny_model})
    template = PromptRenderer(None, "caption.j2")
    question = "Which emotion does this person express? Choose one of: " + ", ".join(DFEW) + ". Answer with one word."
    served_prompts = []
    for v in sorted(res.keys):
        track = FaceTrack.load(artifact(res, v, "faces"))
        plan = artifact(res, v, "context").json(context.CONTEXT_FILE)["gaps"]
        served_prompts += [context._caption_prompt(template, track, w, cfg) for g in plan for w in g["windows"]]
    local_prompts = [Prompt([p if isinstance(p, str) else sent_pixels(p) for p in prompt.parts])
                     for prompt in served_prompts]
    assert len(served_prompts) == 48
    served_cfg = ModelConfig(model=vllm_tiny_model, backend="openai", server_url=vllm_server.v1, max_new_tokens=40)
    backends = {"local": load_backend(ModelConfig(model=vllm_tiny_model, max_new_tokens=40)),
                "served": load_backend(served_cfg)}
    try:
        here = backends["local"].generate(local_prompts)
        there = backends["served"].generate(served_prompts)
        assert [s.rstrip("\ufffd") for s in here] == [s.rstrip("\ufffd") for s in there]
        asks = [Prompt([*p.parts, question]) for p in local_prompts], [Prompt([*p.parts, question]) for p in served_prompts]
        mine, theirs = backends["local"].score_labels(asks[0], DFEW), backends["served"].score_labels(asks[1], DFEW)
    finally:
        for b in backends.values():
            b.close()
    diff = max(abs(a[lab].logprob - b[lab].logprob) for a, b in zip(mine, theirs) for lab in DFEW)
    print(f"same pixels: {len(here)} captions equal, label log-probabilities at most {diff:.2e} apart")
    assert diff <= SAME_PIXELS_TOL
    assert all(max(a, key=lambda lab: a[lab].logprob) == max(b, key=lambda lab: b[lab].logprob)
               for a, b in zip(mine, theirs))


def test_requests_in_flight_change_no_score_and_no_cache_key(clips, vllm_server, vllm_tiny_model, tmp_path):
    classify = [*model("classify", vllm_tiny_model, vllm_server), "classify.use_summaries=false"]
    one = run(clips, tmp_path / "one", tmp_path / "cache-1", *classify, "classify.model.max_concurrency=1")
    eight = run(clips, tmp_path / "eight", tmp_path / "cache-8", *classify, "classify.model.max_concurrency=8")
    assert one.keys == eight.keys
    a, b = scores(one), scores(eight)
    assert list(a) == list(b) == [f"c{i}.mp4" for i in range(N_CLIPS)]  # the input's order, whatever came back first
    for v in a:
        assert a[v]["prediction"] == b[v]["prediction"]
        for lab in DFEW:
            assert a[v]["raw"][lab]["logprob"] == pytest.approx(b[v]["raw"][lab]["logprob"], abs=1e-5)
    again = run(clips, tmp_path / "again", tmp_path / "cache-1", *classify, "classify.model.max_concurrency=8")
    assert {r.stage: (r.cached, r.computed) for r in again.reports}["classify"] == (N_CLIPS, 0)
