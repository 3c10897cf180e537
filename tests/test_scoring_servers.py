"""dfer's label scoring against real model servers (tests/servers.py: vLLM's CPU build and ``transformers serve``,
serving the tiny Qwen2-VL made for vLLM), as issue 22 asks:

* vLLM: every label is scored on its own first-token ids (vLLM's ``logprob_token_ids``), equal to the same
  checkpoint run by transformers in this process; read from the top-k only (a server without that extension), a
  label outside the top-k is a bound and a clip with no label in it an abstention, never the first label;
* ``transformers serve`` ignores ``logprobs``: the run stops in its preflight request, exit 2, naming the server,
  the model and what is missing, with nothing written, even when every score is in the cache already;
* ``classify.answer=generate`` works on both servers and on the transformers backend: free-text answers parsed to
  labels, the others abstentions.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from pipeline.backends import ModelConfig, Prompt
from pipeline.backends.openai_http import OpenAIBackend, image_to_data_url
from pipeline.engine.rundir import RunDir
from pipeline.eval.answers import AnswerParser
from pipeline.eval.labels import load_label_set
from pipeline.eval.ranking import decide
from stages.modelstage import PreflightError
from tests.conftest import copy_clip
from tests.runs import run
from tests.test_real_servers import noise_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DFEW = load_label_set("dfew").names
QUESTION = "Which emotion does this person express? Choose one of: " + ", ".join(DFEW) + ". Answer with one word."


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir, special_clips):
    root = tmp_path_factory.mktemp("served-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    copy_clip(special_clips["expr"], root, "b.mp4")
    (root / "c.mp4").write_bytes(b"not a video at all")  # fails at decoding: a failed clip beside the scored ones
    (root / "list.csv").write_text("path,label\na.mp4,happy\nb.mp4,surprise\nc.mp4,sad\n")
    return root / "list.csv"


def served(server, model: str, *more: str) -> list[str]:
    """The overrides of a run whose classifier is ``model`` on ``server`` (no summaries: no captioner needed)."""
    return ["classify.model.backend=openai", f"classify.model.model={model}", f"classify.model.server_url={server.v1}",
            "classify.use_summaries=false", *more]


@pytest.fixture(scope="module")
def local(vllm_tiny_model):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(vllm_tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(vllm_tiny_model, dtype=torch.float32).eval()
    return processor, model


def local_logprobs(local, images: list, text: str):
    """The checkpoint's next-token log-probabilities in this process, on the images as the server receives them."""
    import torch

    processor, model = local
    sent = [Image.open(io.BytesIO(base64.b64decode(image_to_data_url(im).split(",", 1)[1]))).convert("RGB")
            for im in images]
    messages = [{"role": "user", "content": [*({"type": "image", "image": im} for im in sent),
                                             {"type": "text", "text": text}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        return torch.log_softmax(model(**inputs).logits[0, -1].float(), dim=-1)


def first_ids(processor, label: str) -> list[int]:
    """The label's first token as Qwen's chat template writes the assistant's answer (bare, after ``assistant\\n``):
    the one token vLLM, which renders that template, is asked for; the transformers backend scores the same."""
    user = {"role": "user", "content": [{"type": "text", "text": "Answer."}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    answer = processor.apply_chat_template([user, {"role": "assistant", "content": [{"type": "text", "text": label}]}],
                                           continue_final_message=True, tokenize=False)
    assert answer.startswith(prompt) and answer[len(prompt):] == label
    return [processor.tokenizer(label, add_special_tokens=False)["input_ids"][0]]


def test_vllm_scores_every_label_on_its_own_token_ids(vllm_server, vllm_tiny_model, local):
    cfg = ModelConfig(model=vllm_tiny_model, backend="openai", server_url=vllm_server.v1)
    prompts = [[noise_image(31)], [noise_image(32), noise_image(33, (40, 24))]]
    backend = OpenAIBackend(cfg)
    try:
        rows = backend.score_labels([Prompt([*images, QUESTION]) for images in prompts], DFEW)
        assert backend.scoring_plan(DFEW, Prompt([QUESTION])).rule == "logprob_token_ids"
    finally:
        backend.close()
    for images, row in zip(prompts, rows):
        lp = local_logprobs(local, images, QUESTION)
        for label in DFEW:
            assert row[label].exact and row[label].n_tokens == 1
            assert row[label].logprob == pytest.approx(max(float(lp[i]) for i in first_ids(local[0], label)), abs=1e-4)


def test_vllm_read_from_its_top_k_only_abstains_where_no_label_is_among_them(vllm_server, vllm_tiny_model, local):
    """Without ``logprob_token_ids`` (as on servers that lack it) the answers of this random model rarely hold a label
    among their top 20 tokens: such clips are scored ``none`` and abstain; labels that are there are matched by id."""
    cfg = ModelConfig(model=vllm_tiny_model, backend="openai", server_url=vllm_server.v1)
    prompts = [[noise_image(40 + i)] for i in range(8)]
    backend = OpenAIBackend(cfg, label_token_ids=False)
    try:
        rows = backend.score_labels([Prompt([*images, QUESTION]) for images in prompts], DFEW)
        plan = backend.scoring_plan(DFEW, Prompt([QUESTION]))
    finally:
        backend.close()
    assert plan.rule == "top-k token ids" and "top 20" in plan.description
    kinds = []
    for images, row in zip(prompts, rows):
        lp = local_logprobs(local, images, QUESTION)
        top20 = set(lp.topk(20).indices.tolist())
        floor = float(lp.topk(20).values[-1])
        for label in DFEW:
            ids = first_ids(local[0], label)
            if top20 & set(ids):
                assert row[label].exact
                assert row[label].logprob == pytest.approx(max(float(lp[i]) for i in ids if i in top20), abs=1e-4)
            else:
                assert not row[label].exact and row[label].logprob == pytest.approx(floor, abs=1e-4)
        d = decide({"scores": {lab: s.to_dict() for lab, s in row.items()}}, DFEW)
        kinds.append(d.scored)
        if d.scored == "none":
            assert d.prediction is None and d.abstained == "no label scored"
    assert "none" in kinds  # what issue 22 saw: no label among the top 20; never "happy" by default any more


def test_dfer_run_against_vllm(vllm_server, vllm_tiny_model, clips, tmp_path):
    log = io.StringIO()
    res = run(clips, tmp_path / "run", tmp_path / "cache", *served(vllm_server, vllm_tiny_model), log=log)
    assert res.status == "complete" and res.n_failed == 1  # c.mp4 is not a video
    with open(res.run_dir / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["video"], r["scored"]) for r in rows] == [("a.mp4", "exact"), ("b.mp4", "exact")]
    for _, row in RunDir(res.run_dir).scores():
        assert all(v["exact"] for v in row["raw"].values())
        assert row["label_matching"].startswith("every label's first token ids, asked for by id")
        assert row["prediction"] == max(row["scores"], key=row["scores"].get)
    status = RunDir(res.run_dir).status()
    assert status["scoring"]["exact"] == 2 and status["models"]["classify"] == f"{vllm_tiny_model} (openai)"
    assert "labels matched by every label's first token ids" in log.getvalue()


def dfer(*args: str, cache) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DFER_CACHE": str(cache)}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "-q", "--set", "run.workers=1"],
                          capture_output=True, text=True, env=env, timeout=600)
    return done, time.monotonic() - t0


def test_a_server_that_ignores_logprobs_stops_the_run_before_any_clip(transformers_server, vllm_server, vllm_tiny_model,
                                                                      clips, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    sets = [a for o in served(transformers_server, vllm_tiny_model) for a in ("--set", o)]
    done, seconds = dfer(str(clips), "--out", str(out), *sets, cache=cache)
    assert done.returncode == 2, done.stderr
    msg = done.stderr
    assert f"the server at {transformers_server.v1} (model '{vllm_tiny_model}')" in msg
    assert "without any log-probabilities" in msg and "`logprobs`/`top_logprobs`" in msg and "Traceback" not in msg
    assert "classify.answer=generate" in msg
    assert not out.exists() and not any((cache / stage).exists() for stage in ("faces", "keyframes", "classify"))
    print(f"transformers serve: stopped in preflight after {seconds:.1f} s (the whole dfer command)")

    # every score cached by a run against vLLM (the same model name): the other server is still asked first
    vllm = [a for o in served(vllm_server, vllm_tiny_model) for a in ("--set", o)]
    first, _ = dfer(str(clips), "--out", str(tmp_path / "vllm"), *vllm, cache=cache)
    assert first.returncode == 1, first.stderr  # c.mp4 fails
    again, _ = dfer(str(clips), "--out", str(out), *sets, cache=cache)
    assert again.returncode == 2 and "without any log-probabilities" in again.stderr and "cached" not in again.stderr
    assert not out.exists()


def test_free_text_answers_on_both_servers_and_the_transformers_backend(transformers_server, vllm_server,
                                                                        vllm_tiny_model, clips, tmp_path):
    parse = AnswerParser(load_label_set("dfew")).parse
    runs = {"transformers serve": served(transformers_server, vllm_tiny_model, "classify.answer=generate"),
            "vLLM": served(vllm_server, vllm_tiny_model, "classify.answer=generate"),
            "transformers backend": [f"classify.model.model={vllm_tiny_model}", "classify.use_summaries=false",
                                     "classify.answer=generate"]}
    for name, overrides in runs.items():
        res = run(clips, tmp_path / name, tmp_path / "cache", *overrides, "classify.model.max_new_tokens=4")
        assert res.status == "complete", name
        rows = [row for _, row in RunDir(res.run_dir).scores()]
        assert [r["video"] for r in rows] == ["a.mp4", "b.mp4"]
        for r in rows:
            assert isinstance(r["answer"], str) and r["prediction"] == parse(r["answer"])
            assert r["scored"] == ("none" if r["prediction"] is None else "exact")
            assert r["abstained"] == (None if r["prediction"] else "answer names no label")
            assert "raw" not in r and "label_matching" not in r


def test_generate_on_a_backend_that_writes_no_answer_is_refused(clips, tmp_path):
    with pytest.raises(PreflightError, match="classify.answer=generate: .*reads no prompt"):
        run(clips, tmp_path / "run", tmp_path / "cache", "classify.model.backend=expression", "classify.answer=generate")


def test_report_and_compare_of_a_served_run_with_abstentions_and_a_failed_clip(transformers_server, vllm_tiny_model,
                                                                               clips, tmp_path):
    """A real run with both kinds of error: free-text answers of the random model (most name no label: abstentions)
    and c.mp4, not a video. ``dfer report`` and ``dfer compare`` show the headline over all 3 labelled clips beside
    the scored clips' figure."""
    from pipeline.cli import main
    from pipeline.report.compare import compare_runs
    from pipeline.report.markdown import md as md_text

    res = run(clips, tmp_path / "run", tmp_path / "cache", "classify.model.max_new_tokens=4",
              *served(transformers_server, vllm_tiny_model, "classify.answer=generate"))
    rows = {r["video"]: r for _, r in RunDir(res.run_dir).scores()}
    assert res.n_failed == 1 and set(rows) == {"a.mp4", "b.mp4"}
    assert main(["report", str(res.run_dir)]) == 0
    rep = RunDir(res.run_dir).metrics()
    right = sum(rows[v]["prediction"] == t for v, t in (("a.mp4", "happy"), ("b.mp4", "surprise")))
    abstained = sum(r["prediction"] is None for r in rows.values())
    assert rep["counts"]["failed_labelled"] == 1  # c.mp4's label comes from the input list
    assert rep["metrics_all_clips"]["n"] == 3 and rep["metrics"]["n"] == 2
    assert rep["metrics_all_clips"]["war"] == pytest.approx(right / 3) and rep["metrics"]["war"] == pytest.approx(right / 2)
    assert rep["abstentions"]["count"] == abstained
    md = (res.run_dir / "report.md").read_text()
    assert "| metric (%) | all clips (3 labelled) | scored clips (2 labelled) |" in md
    assert f"the 1 failed and the {abstained} abstained ones as errors" in md
    # the model that ran, as Markdown holds a path (a temporary folder's name may have an "_", escaped there)
    assert f"classify: {md_text(vllm_tiny_model)} (openai)" in md
    table = compare_runs([res.run_dir])
    head = rep["metrics_all_clips"]
    assert f"| run | none | 3 | 2 | {abstained} | 0 | 1 | {100 * head['uar']:.2f} [" in table
    assert "Headline: all labelled clips" in table and "Scored clips only" in table
    assert "| run | 2 | " in table and f"| classify | {vllm_tiny_model} (openai) |" in table
