"""The one ranking rule (pipeline/eval/ranking.py): how a clip was scored (exact | partial | none), abstentions, and
ties that are never decided by label order; free-text answers parsed to labels (pipeline/eval/answers.py); and a
model whose scores are uniform, run end to end on the transformers backend, abstains on every clip instead of
predicting the first label."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from pipeline.core.errors import LabelError
from pipeline.engine.rundir import RunDir
from pipeline.eval.answers import AnswerParser
from pipeline.eval.calibration import tau_sweep
from pipeline.eval.labels import load_label_set
from pipeline.eval.ranking import ABSTAIN_NONE, ABSTAIN_TIE, ABSTAIN_UNPARSED, choose, decide, predict, scored_kind
from tests.conftest import copy_clip
from tests.runs import run

DFEW = load_label_set("dfew").names


def raw(values: dict, exact: dict | None = None) -> dict:
    return {lab: {"logprob": v, "n_tokens": 1, "exact": (exact or {}).get(lab, True)} for lab, v in values.items()}


def test_uniform_scores_give_no_label_whatever_the_label_order():
    for labels in (DFEW, DFEW[::-1], sorted(DFEW)):
        d = decide({"scores": raw({lab: -1.9459 for lab in labels})}, labels)
        assert d.prediction is None and d.abstained == ABSTAIN_TIE and d.scored == "exact"
        assert predict(raw({lab: -1.9459 for lab in labels}), labels) is None


def test_a_tie_at_the_top_is_an_abstention_a_clear_best_label_is_not():
    values = {lab: -5.0 for lab in DFEW} | {"sad": -1.0, "fear": -1.0}
    assert decide({"scores": raw(values)}, DFEW).prediction is None
    values["fear"] = -1.0001
    assert decide({"scores": raw(values)}, DFEW).prediction == "sad"
    assert choose([None, -2.0, None], ["a", "b", "c"], "exact") == ("b", None)


def test_how_a_clip_was_scored_follows_the_exact_flags():
    values = {lab: -9.0 for lab in DFEW} | {"fear": -0.5}
    everything = raw(values)
    some = raw(values, {lab: lab == "fear" for lab in DFEW})
    nothing = raw(values, {lab: False for lab in DFEW})
    assert [scored_kind(r, DFEW) for r in (everything, some, nothing)] == ["exact", "partial", "none"]
    assert decide({"scores": some}, DFEW).prediction == "fear"  # a top-k label beats every bound
    d = decide({"scores": nothing}, DFEW)
    assert (d.scored, d.prediction, d.abstained) == ("none", None, ABSTAIN_NONE)
    # "none" abstains even when calibration would make the bounds differ
    assert choose([-1.0, -2.0], ["a", "b"], "none") == (None, ABSTAIN_NONE)


def test_a_partial_clip_whose_best_label_sits_at_the_kth_value_is_a_tie_with_the_bounds():
    values = {lab: -3.0 for lab in DFEW}  # the k-th value is -3.0: "sad" is the k-th token, the rest are below it
    d = decide({"scores": raw(values, {lab: lab == "sad" for lab in DFEW})}, DFEW)
    assert (d.scored, d.prediction, d.abstained) == ("partial", None, ABSTAIN_TIE)


def test_free_text_answers_are_parsed_to_labels_or_abstain():
    parse = AnswerParser(load_label_set("dfew")).parse
    cases = {"Happy.": "happy", " surprised!": "surprise", "The emotion is happiness.": "happy",
             "I think they are scared": "fear", "unhappy": "sad", "angry or sad": None, "3": None,
             "a face": None, "": None, "Disgusted": "disgust", "sadness, clearly sadness": "sad"}
    assert {text: parse(text) for text in cases} == cases
    d = decide({"answer": "Neutral"}, DFEW, parse=parse)
    assert (d.prediction, d.scored, d.scores["neutral"], d.scores["happy"]) == ("neutral", "exact", 0.0, None)
    d = decide({"answer": "It is hard to say"}, DFEW, parse=parse)
    assert (d.prediction, d.scored, d.abstained) == (None, "none", ABSTAIN_UNPARSED)


def test_multi_word_synonyms_and_a_synonym_given_to_two_labels(tmp_path):
    f = tmp_path / "labels.yaml"
    f.write_text("name: mine\nlabels:\n  - name: letdown\n    aliases: [disappointment, '11']\n"
                 "    synonyms: [let down]\n  - name: calm\n    synonyms: [at ease]\n")
    parse = AnswerParser(load_label_set(f)).parse
    assert [parse(t) for t in ("They feel let down", "at ease", "11", "down")] == ["letdown", "calm", None, None]
    f.write_text("name: bad\nlabels:\n  - name: a\n    synonyms: [glad]\n  - name: b\n    synonyms: [Glad]\n")
    with pytest.raises(LabelError, match=r"labels.yaml: 'Glad' names both 'a' and 'b'"):
        AnswerParser(load_label_set(f))
    f.write_text("name: bad\nlabels:\n  - name: a\n    synonyms: glad\n")
    with pytest.raises(LabelError, match=r"labels.yaml: label 'a': 'synonyms' must be a list of words"):
        AnswerParser(load_label_set(f))


def test_the_tau_sweep_counts_ties_and_none_rows_as_errors():
    scores = np.array([[0.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    rows = tau_sweep(scores, ["a", "a", "b"], np.array([0.5, 0.5]), [1.0], ["a", "b"], ["exact", "exact", "none"])
    assert rows[0]["war"] == pytest.approx(1 / 3)  # the tie and the none row are wrong, not "a"


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def uniform_model(tmp_path_factory):
    """The tiny Qwen2-VL with its output layer zeroed: every next token equally likely, whatever the prompt."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests.tiny_models import shared_tiny_model_dir

    src = shared_tiny_model_dir("qwen2vl")
    out = tmp_path_factory.mktemp("uniform-qwen")
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(src).save_pretrained(out)
    return str(out)


def test_a_model_with_uniform_scores_abstains_on_every_clip_instead_of_predicting_the_first_label(
        uniform_model, clip_dir, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        copy_clip(clip_dir["pan.mp4"], root, name)
    (root / "list.csv").write_text("path,label\na.mp4,happy\nb.mp4,sad\n")
    log = io.StringIO()
    res = run(root / "list.csv", tmp_path / "run", tmp_path / "cache", f"classify.model.model={uniform_model}",
              "classify.use_summaries=false", log=log)
    assert res.status == "complete" and res.n_failed == 0
    with open(res.run_dir / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["prediction"], r["scored"], r["abstained"]) for r in rows] == [("", "exact", "tie")] * 2
    assert all(r[f"p_{lab}"] == "" for r in rows for lab in DFEW)
    scores = [row for _, row in RunDir(res.run_dir).scores()]
    assert all(s["prediction"] is None and len(set(s["scores"].values())) == 1 for s in scores)
    assert "abstained on 2 of 2 clips (no prediction, counted as errors): 2 tie" in log.getvalue()
    status = RunDir(res.run_dir).status()
    assert status["scoring"]["abstained"] == 2 and status["scoring"]["exact"] == 2
