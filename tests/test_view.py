"""`dfer view`: the page of a real run (tiny models) opened from disk in headless Chromium, and bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.report import build_report
from pipeline.view import RunDirError, build_view, write_view
from tests.browser import console_errors, open_page, screenshot_stats, start_browser, wait_for
from tests.conftest import copy_clip
from tests.runs import artifact, copy_run, run, scale_run
from tests.tiny_models import shared_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LONG = "d_session_2024_11_participant_017_take_03_front_camera_without_any_space_in_its_name.mp4"


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir, special_clips):
    root = tmp_path_factory.mktemp("view-in")
    for spec, name in ((clip_dir["pan.mp4"], "a.mp4"), (special_clips["expr"], "b.mp4"),
                       (clip_dir["sub/zoom.webm"], "c.webm"), (special_clips["vfr"], LONG),
                       (special_clips["noface"], "e.mp4")):
        copy_clip(spec, root, name)
    lst = root / "list.csv"
    lst.write_text("path,label\na.mp4,happy\nb.mp4,surprise\nc.webm,sad\n" f"{LONG},happy\n" "e.mp4,fear\n")
    return lst


@pytest.fixture(scope="module")
def scored(clips, tmp_path_factory):
    """A complete run: 4 clips scored, 1 failed at faces (no face)."""
    root = tmp_path_factory.mktemp("view-run")
    model = shared_tiny_model_dir("qwen2vl")
    res = run(clips, root / "run", root / "cache", f"context.model.model={model}", "context.model.max_new_tokens=6",
              f"classify.model.model={model}")
    assert res.status == "complete" and res.n_failed == 1
    return res


@pytest.fixture(scope="module")
def page(scored):
    return write_view(scored.run_dir)


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def predictions(run_dir) -> list[dict]:
    with open(Path(run_dir) / "predictions.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def card_ids(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.id)")


def shown_count(driver) -> int:
    return int(driver.find_element("id", "count").get_attribute("data-count"))


def test_page_opens_from_disk_with_one_card_per_clip_and_no_console_errors(browser, page, scored):
    open_page(browser, page)
    assert console_errors(browser) == []
    assert card_ids(browser) == ["a.mp4", "b.mp4", "c.webm", LONG, "e.mp4"]
    # every keyframe of every scored clip is an image the browser decoded
    n_keyframes = sum(len(artifact(scored, v, "keyframes").json("keyframes.json")["indices"])
                      for v in ("a.mp4", "b.mp4", "c.webm", LONG))
    widths = browser.execute_script("return [...document.querySelectorAll('.timeline img')].map(i => i.naturalWidth)")
    assert len(widths) == n_keyframes and all(w == 80 for w in widths)


def test_page_needs_nothing_from_the_network(page):
    html = page.read_text(encoding="utf-8")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert "http://" not in html and "https://" not in html


def test_confusion_matrix_counts_are_those_of_predictions_csv(browser, page, scored):
    pairs = Counter((r["label"], r["prediction"]) for r in predictions(scored.run_dir))
    open_page(browser, page)
    cells = browser.execute_script(
        "return [...document.querySelectorAll('.cell')].map(c => [c.dataset.true, c.dataset.pred, +c.textContent])")
    assert len(cells) == 49 and {(t, p): n for t, p, n in cells if n} == pairs


@pytest.fixture(scope="module")
def many(scored, tmp_path_factory):
    """60 clips (real cached artifacts, random scores, varied predictions) and its page."""
    big = scale_run(scored.run_dir, tmp_path_factory.mktemp("view-many") / "run", 60, fail_every=20)
    return big, write_view(big)


def discriminating_pair(rows) -> tuple[str, str]:
    """A (true, predicted) pair whose clips are neither all clips of that true label nor all of that prediction."""
    pairs = Counter((r["label"], r["prediction"]) for r in rows)
    by_true, by_pred = Counter(r["label"] for r in rows), Counter(r["prediction"] for r in rows)
    return next(p for p, n in pairs.most_common() if n < by_true[p[0]] and n < by_pred[p[1]])


def test_confusion_cell_filters_the_cards_to_its_true_and_predicted_pair(browser, many):
    rows = predictions(many[0])
    pair = discriminating_pair(rows)
    expected = [r["video"] for r in rows if (r["label"], r["prediction"]) == pair]
    open_page(browser, many[1])
    assert shown_count(browser) == 60
    cell = browser.find_element("css selector", f'.cell[data-true="{pair[0]}"][data-pred="{pair[1]}"]')
    assert int(cell.text) == len(expected)
    cell.click()
    wait_for(lambda: shown_count(browser) != 60)
    assert card_ids(browser) == expected and shown_count(browser) == len(expected)
    assert console_errors(browser) == []


def test_url_fragment_keeps_the_filter_across_a_reload(browser, many):
    pair = discriminating_pair(predictions(many[0]))
    open_page(browser, many[1])
    browser.find_element("css selector", f'.cell[data-true="{pair[0]}"][data-pred="{pair[1]}"]').click()
    wait_for(lambda: shown_count(browser) != 60)
    url = browser.current_url
    assert f"true={pair[0]}" in url and f"pred={pair[1]}" in url
    filtered = card_ids(browser)
    assert 0 < len(filtered) < 60
    open_page(browser, url)  # a fresh load of the shared link
    assert card_ids(browser) == filtered
    assert browser.find_element("id", "f-true").get_attribute("value") == pair[0]
    assert browser.find_element("css selector", ".cell.selected").get_attribute("data-pred") == pair[1]


def test_outcome_filter_and_confidence_sort_follow_predictions_csv(browser, many):
    rows = predictions(many[0])
    labels = [k[2:] for k in rows[0] if k.startswith("p_")]
    conf = {r["video"]: max(float(r[f"p_{lab}"]) for lab in labels) for r in rows if r["label"] != r["prediction"]}
    open_page(browser, Path(many[1]).resolve().as_uri() + "#outcome=incorrect&sort=conf-asc")
    assert card_ids(browser) == sorted(conf, key=conf.get)


def test_probability_bars_are_the_run_probabilities_with_the_true_label_marked(browser, page, scored):
    row = predictions(scored.run_dir)[1]
    labels = [k[2:] for k in row if k.startswith("p_")]
    open_page(browser, page)
    card = browser.find_element("css selector", f'.card[data-id="{row["video"]}"]')
    bars = card.find_elements("css selector", ".prob")
    assert [b.get_attribute("data-label") for b in bars] == labels
    for b, lab in zip(bars, labels):
        assert abs(float(b.find_element("css selector", ".val").text) - float(row[f"p_{lab}"])) < 1e-3
    assert [b.get_attribute("data-label") for b in card.find_elements("css selector", ".prob.true")] == [row["label"]]
    assert [b.get_attribute("data-label") for b in card.find_elements("css selector", ".prob.pred")] == [row["prediction"]]


def test_keyboard_moves_between_cards_searches_and_resets(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, page)
    active = lambda: browser.execute_script("return document.activeElement.dataset.id || document.activeElement.id")  # noqa: E731
    keys = ActionChains(browser)
    keys.send_keys("j").perform()
    assert active() == "a.mp4"
    keys.send_keys("j").send_keys("j").perform()
    assert active() == "c.webm"
    keys.send_keys("k").perform()
    assert active() == "b.mp4"
    keys.send_keys("/").perform()
    assert active() == "f-q"
    keys.send_keys("webm").perform()
    assert wait_for(lambda: card_ids(browser) == ["c.webm"])
    keys.send_keys(Keys.ESCAPE).perform()
    assert wait_for(lambda: shown_count(browser) == 5)
    cell = browser.find_element("css selector", ".cell.diag")
    browser.execute_script("arguments[0].focus()", cell)
    keys.send_keys(Keys.ENTER).perform()
    pred = cell.get_attribute("data-pred")
    assert wait_for(lambda: browser.find_element("id", "f-pred").get_attribute("value") == pred)


def test_narrow_window_has_no_horizontal_overflow(browser, page):
    try:
        browser.set_window_size(360, 800)
        open_page(browser, page)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
    finally:
        browser.set_window_size(1280, 900)


def test_screenshot_is_not_blank(browser, page, tmp_path):
    open_page(browser, page)
    colours, spread = screenshot_stats(browser, tmp_path / "view.png")
    assert colours > 200 and spread > 20


def test_summary_metrics_and_calibration_come_from_the_report(scored, tmp_path):
    data = build_view(scored.run_dir, calibration="estimated")
    rep = build_report(scored.run_dir, calibration="estimated")
    assert data["summary"]["calibration"]["method"] == "estimated"
    assert data["summary"]["metrics"]["uar"] == rep["metrics_all_clips"]["uar"]  # the headline: the failed clip counts
    assert data["summary"]["metrics_scored"]["uar"] == rep["metrics"]["uar"]
    assert data["summary"]["confusion"]["matrix"] == rep["metrics"]["confusion_matrix"]["matrix"]
    cards = {c["id"]: c for c in data["cards"]}
    assert {v: cards[v]["pred"] for v in rep["predictions"]} == rep["predictions"]
    for v, pred in rep["predictions"].items():  # the bars are the calibrated probabilities
        p = cards[v]["probs"]
        assert data["summary"]["labels"][p.index(max(p))] == pred


def test_summary_names_what_a_default_prompt_holds(scored):
    assert build_view(scored.run_dir)["summary"]["settings"]["prompt"] == "keyframes, motion summaries"


def test_failed_clip_card_names_its_stage_and_message(browser, page, scored):
    fail = json.loads((scored.run_dir / "failures.jsonl").read_text(encoding="utf-8").splitlines()[0])
    open_page(browser, page)
    card = browser.find_element("css selector", f'.card[data-id="{fail["video"]}"]')
    text = card.find_element("css selector", ".failure").text
    assert fail["stage"] in text and fail["message"] in text
    assert card.find_elements("css selector", ".note") == []  # its missing faces artifact is not "gone"


def test_run_without_summaries_shows_keyframes_only(clips, scored, tmp_path):
    model = shared_tiny_model_dir("qwen2vl")
    cache = (scored.run_dir / "cache_dir.txt").read_text().strip()
    res = run(clips, tmp_path / "run", cache, f"classify.model.model={model}", "classify.use_summaries=false")
    data = build_view(res.run_dir)
    timelines = [c["timeline"] for c in data["cards"] if c["outcome"] != "failed"]
    assert len(timelines) == 4 and all(tl and {it["type"] for it in tl} == {"frame"} for tl in timelines)
    assert all(it["src"].startswith("data:image/jpeg;base64,") for tl in timelines for it in tl)


def test_dense_video_run_shows_the_frames_the_video_held(clips, scored, tmp_path):
    model = shared_tiny_model_dir("qwen2vl")
    cache = (scored.run_dir / "cache_dir.txt").read_text().strip()
    res = run(clips, tmp_path / "run", cache, f"classify.model.model={model}", "classify.dense_fps=5",
              "classify.dense_input=video")
    assert res.status == "complete"
    cards = [c for c in build_view(res.run_dir)["cards"] if c["outcome"] != "failed"]
    assert len(cards) == 4
    for card in cards:
        assert card["timeline"] and {it["type"] for it in card["timeline"]} == {"frame"}
        assert all(it["src"].startswith("data:image/jpeg;base64,") for it in card["timeline"])
        assert any("as one video at" in n for n in card["notes"])
    assert build_view(res.run_dir)["summary"]["settings"]["prompt"] == "dense frames at 5.0 fps"


# -------------------------------------------------------------------------------------------------
# bad input


def test_folder_that_is_not_a_run_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not a run directory" in err
    assert not (tmp_path / "view.html").exists()


def test_run_killed_before_its_manifest_says_so(tmp_path):
    (tmp_path / "config.yaml").write_text("run: {}\n")
    with pytest.raises(RunDirError, match="did not finish"):
        write_view(tmp_path)


def test_malformed_scores_line_names_file_and_line(scored, tmp_path):
    bad = copy_run(scored.run_dir, tmp_path / "run")
    with open(bad / "scores.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    n = len((bad / "scores.jsonl").read_text().splitlines())
    with pytest.raises(ValueError, match=rf"scores.jsonl:{n}: not valid JSON"):
        write_view(bad)


def test_run_stopped_before_classify_shows_what_exists_and_says_what_is_missing(clips, scored, browser, tmp_path):
    cache = (scored.run_dir / "cache_dir.txt").read_text().strip()
    res = run(clips, tmp_path / "run", cache, "run.fallback=stop")  # default models are not here: stop before context
    assert res.status == "stopped"
    open_page(browser, write_view(res.run_dir))
    assert console_errors(browser) == []
    missing = browser.find_element("id", "missing").text
    assert "stopped before stage 'context'" in missing and "no label scores" in missing
    outcomes = Counter(browser.execute_script("return [...document.querySelectorAll('.badge')].map(b => b.textContent)"))
    assert outcomes == {"not scored": 4, "failed": 1}
    assert browser.find_elements("css selector", ".prob") == [] and browser.find_elements("css selector", ".cell") == []
    assert not browser.find_element("id", "f-pred").is_displayed() and browser.find_element("id", "f-true").is_displayed()
    widths = browser.execute_script("return [...document.querySelectorAll('.timeline img')].map(i => i.naturalWidth)")
    assert len(widths) >= 4 and all(w == 80 for w in widths)
    colours, spread = screenshot_stats(browser, tmp_path / "stopped.png")
    assert colours > 200 and spread > 20


@pytest.mark.parametrize("what", ["crops file", "faces artifact"])
def test_clip_whose_crops_are_gone_gets_a_note_and_the_page_still_works(scored, browser, tmp_path, what):
    cache = tmp_path / "cache"
    shutil.copytree((scored.run_dir / "cache_dir.txt").read_text().strip(), cache)
    copy = copy_run(scored.run_dir, tmp_path / "run", cache)
    faces_key = scored.keys["b.mp4"]["faces"]
    art = cache / "faces" / faces_key[:2] / faces_key
    if what == "crops file":
        (art / "crops.jpg.bin").unlink()
    else:
        shutil.rmtree(art)
    open_page(browser, write_view(copy))
    assert console_errors(browser) == []
    gone = browser.find_element("css selector", '.card[data-id="b.mp4"]')
    note = gone.find_element("css selector", ".note").text
    assert "face crops" in note and "gone" in note and "re-run `dfer run`" in note
    assert gone.find_elements("css selector", "img") == [] and len(gone.find_elements("css selector", ".noimg")) >= 1
    assert len(gone.find_elements("css selector", ".prob")) == 7  # its scores are still shown
    kept = browser.find_element("css selector", '.card[data-id="a.mp4"]')
    assert kept.find_elements("css selector", "img") and kept.find_elements("css selector", ".note") == []


def test_run_whose_cache_is_gone_still_shows_its_scores(scored, tmp_path):
    copy = copy_run(scored.run_dir, tmp_path / "run", tmp_path / "deleted-cache")
    data = build_view(copy)
    assert any("does not exist" in n and "deleted-cache" in n for n in data["summary"]["notes"])
    assert sum(c["probs"] is not None for c in data["cards"]) == 4
    assert all(c["timeline"] == [] for c in data["cards"])


def test_text_from_the_run_is_shown_as_text_not_markup(scored, browser, tmp_path):
    copy = copy_run(scored.run_dir, tmp_path / "run")
    evil = "</script><img src=x onerror=\"document.title='pwned'\"><!--"
    row = json.loads((copy / "failures.jsonl").read_text().splitlines()[0])
    (copy / "failures.jsonl").write_text(json.dumps({**row, "message": evil}) + "\n")
    open_page(browser, write_view(copy))
    assert console_errors(browser) == []
    assert browser.title != "pwned"
    assert evil in browser.find_element("css selector", f'.card[data-id="{row["video"]}"] .failure').text
    assert len(card_ids(browser)) == 5


def test_scores_only_run_from_any_backend_and_without_labels(browser, tmp_path):
    """A run folder with only scores.jsonl (server backend: an inexact label; a model named per row)."""
    labels = ["happy", "sad", "neutral"]
    (tmp_path / "labelset.json").write_text(json.dumps({"name": "mine", "labels": labels}))
    rows = [{"video": f"v{i}.mp4", "label": None, "labels": labels, "model": "served-model",
             "scores": {"happy": -1.0 - i, "sad": -2.0, "neutral": -3.0},
             "raw": {"happy": {"exact": True}, "sad": {"exact": True}, "neutral": {"exact": False}}} for i in range(3)]
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    open_page(browser, write_view(tmp_path))
    assert console_errors(browser) == []
    assert card_ids(browser) == ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert "no metrics" in browser.find_element("id", "metrics").text
    assert browser.find_elements("css selector", ".cell") == []
    card = browser.find_element("css selector", '.card[data-id="v2.mp4"]')
    assert "served-model" in card.find_element("css selector", ".model").text
    assert card.find_element("css selector", '.prob[data-label="neutral"] .val').text.startswith("\u2264")
    assert card.find_element("css selector", ".badge").text.lower() == "scored, no label"


def test_lead_in_and_lead_out_gaps_are_labelled(scored, browser, page):
    gaps = artifact(scored, "a.mp4", "keyframes").json("keyframes.json")["gaps"]
    assert gaps[0]["kind"] == "lead_in" and gaps[-1]["kind"] == "lead_out"  # what a real run writes
    open_page(browser, page)
    kinds = browser.execute_script("return [...document.querySelectorAll('.card[data-id=\"a.mp4\"] .gap')]"
                                   ".map(g => (g.querySelector('.kind') || {}).textContent || null)")
    expected = {"lead_in": "lead-in", "lead_out": "lead-out", "between": None}
    assert kinds == [expected[g["kind"]] for g in gaps]


def test_frames_beyond_the_per_card_cap_are_left_out_with_a_note(scored, monkeypatch):
    from pipeline.view import cards

    monkeypatch.setattr(cards, "MAX_IMAGES", 2)
    card = next(c for c in build_view(scored.run_dir)["cards"] if c["id"] == "a.mp4")
    times = artifact(scored, "a.mp4", "keyframes").json("keyframes.json")["timestamps"]
    frames = [it for it in card["timeline"] if it["type"] == "frame"]
    assert [f["t"] for f in frames] == [round(times[0], 3), round(times[-1], 3)] and all(f["src"] for f in frames)
    assert any(f"saw {len(times)} frames; 2 of them" in n for n in card["notes"])


def test_controls_without_data_are_hidden(browser, tmp_path):
    labels = ["happy", "sad"]
    (tmp_path / "labelset.json").write_text(json.dumps({"name": "two", "labels": labels}))
    (tmp_path / "scores.jsonl").write_text(json.dumps({"video": "v.mp4", "label": None, "labels": labels,
                                                       "scores": {"happy": -1.0, "sad": -2.0}}) + "\n")
    open_page(browser, write_view(tmp_path))
    shown = {i: browser.find_element("id", i).is_displayed() for i in ("f-true", "f-pred", "f-sort", "f-outcome")}
    assert shown == {"f-true": False, "f-pred": True, "f-sort": True, "f-outcome": True}


def test_damaged_artifact_costs_only_its_cards_timeline(scored, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree((scored.run_dir / "cache_dir.txt").read_text().strip(), cache)
    copy = copy_run(scored.run_dir, tmp_path / "run", cache)
    key = scored.keys["a.mp4"]["keyframes"]
    (cache / "keyframes" / key[:2] / key / "keyframes.json").write_text("{half a fi")
    cards = {c["id"]: c for c in build_view(copy)["cards"]}
    assert cards["a.mp4"]["timeline"] == [] and "could not be read" in cards["a.mp4"]["notes"][0]
    assert cards["a.mp4"]["probs"] is not None and cards["b.mp4"]["timeline"]


def test_run_ended_by_until_names_the_stages_it_did_not_run(clips, scored, tmp_path):
    cache = (scored.run_dir / "cache_dir.txt").read_text().strip()
    res = run(clips, tmp_path / "run", cache, until="keyframes")
    missing = build_view(res.run_dir)["summary"]["missing"]
    assert missing[0] == "Not computed: context, classify (the run ended after stage 'keyframes' (--until))."


# ------------------------------------------------------------------ a run too big for one page: cards in files


@pytest.fixture(scope="module")
def paged(scored, tmp_path_factory):
    """250 clips written as a page with its cards in view_files/ (chunks of 100, so three scripts)."""
    big = scale_run(scored.run_dir, tmp_path_factory.mktemp("view-paged") / "run", 250, fail_every=25)
    return big, write_view(big, one_file_max=100)


def loaded_chunks(driver) -> list[int]:
    return sorted(driver.execute_script("return window.dferChunksLoaded"))


def test_a_big_run_writes_a_small_page_and_its_cards_beside_it(paged):
    run_dir, page = paged
    files = run_dir / "view_files"
    assert page == run_dir / "view.html" and files.is_dir()
    assert sorted(p.name for p in files.glob("cards-*.js")) == ["cards-00000.js", "cards-00001.js", "cards-00002.js"]
    text = page.read_text(encoding="utf-8")
    assert "data:image" not in text and "dfer-data" in text
    data = json.loads(re.search(r'<script id="dfer-data" type="application/json">(.*?)</script>', text, re.S).group(1))
    assert [e["id"] for e in data["index"]] == [f"clips/{i:05d}.mp4" for i in range(250)]
    assert len(data["index"]) == 250 and set(data["index"][0]) == {"id", "true", "pred", "outcome", "conf", "margin"}
    thumbs = list((files / "thumbs").rglob("*.jpg"))
    assert thumbs and all(p.stat().st_size > 100 for p in thumbs)


def test_a_big_page_opens_with_its_first_cards_and_loads_only_the_scripts_it_shows(browser, paged):
    run_dir, page = paged
    open_page(browser, page)
    assert console_errors(browser) == []
    assert shown_count(browser) == 250
    ids = card_ids(browser)
    assert ids == [f"clips/{i:05d}.mp4" for i in range(len(ids))] and 0 < len(ids) < 100
    assert loaded_chunks(browser) == [0]
    img = browser.find_element("css selector", ".card .frame img")
    assert img.get_attribute("src").startswith((run_dir / "view_files").as_uri() + "/thumbs/")
    assert wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)) == 80


def test_a_big_page_sorts_and_filters_over_every_clip(browser, paged):
    run_dir, page = paged
    rows = predictions(run_dir)
    labels = [k[2:] for k in rows[0] if k.startswith("p_")]
    conf = {r["video"]: max(float(r[f"p_{lab}"]) for lab in labels) for r in rows if r["label"] != r["prediction"]}
    open_page(browser, Path(page).resolve().as_uri() + "#outcome=incorrect&sort=conf-asc")
    expected = sorted(conf, key=conf.get)
    shown = card_ids(browser)
    assert shown == expected[:len(shown)] and len(shown) >= min(len(expected), 60)
    assert loaded_chunks(browser) == [0, 1, 2]  # the least confident clips are spread over the whole run
    pair = discriminating_pair(rows)
    open_page(browser, page)
    browser.find_element("css selector", f'.cell[data-true="{pair[0]}"][data-pred="{pair[1]}"]').click()
    want = [r["video"] for r in rows if (r["label"], r["prediction"]) == pair]
    assert wait_for(lambda: card_ids(browser) == want)
    assert console_errors(browser) == []


def test_a_big_page_shows_more_cards_as_it_scrolls_until_every_clip_is_shown(browser, paged):
    open_page(browser, paged[1])
    counts = [len(card_ids(browser))]
    while counts[-1] < 250 and len(counts) < 20:
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # the "Show more" button comes in view
        wait_for(lambda: len(card_ids(browser)) > counts[-1])
        counts.append(len(card_ids(browser)))
    assert counts == [60, 120, 180, 240, 250]
    assert card_ids(browser) == [f"clips/{i:05d}.mp4" for i in range(250)]
    failed = browser.find_elements("css selector", ".card.failed")
    assert len(failed) == 10 and "no face" in failed[0].find_element("css selector", ".failure").text
    assert console_errors(browser) == []


def test_a_big_page_without_its_folder_says_what_is_missing(browser, paged, tmp_path):
    lone = tmp_path / "view.html"
    shutil.copyfile(paged[1], lone)
    open_page(browser, lone)
    message = browser.find_element("css selector", ".load-error").text
    assert "cards-00000.js" in message and "view_files" in message
    assert shown_count(browser) == 250 and card_ids(browser) == []
    missing = console_errors(browser)  # the browser's own lines for the missing script (drained for the next test)
    assert missing and all("view_files/cards-" in m and "ERR_FILE_NOT_FOUND" in m for m in missing), missing


def test_a_page_written_small_again_removes_its_old_folder_and_a_foreign_folder_is_refused(paged, tmp_path):
    run_dir = paged[0]
    copy = copy_run(run_dir, tmp_path / "run")
    page = write_view(copy, one_file_max=100)
    assert (copy / "view_files" / "cards-00000.js").is_file()
    page = write_view(copy, one_file_max=1000)
    assert not (copy / "view_files").exists() and "data:image" in page.read_text(encoding="utf-8")
    other = tmp_path / "elsewhere"
    (other / "mine_files").mkdir(parents=True)
    (other / "mine_files" / "notes.txt").write_text("my notes")
    with pytest.raises(RunDirError, match=r"mine_files exists and was not written by `dfer view`"):
        write_view(copy, other / "mine.html", one_file_max=100)
    assert (other / "mine_files" / "notes.txt").read_text() == "my notes" and not (other / "mine.html").exists()


def test_abstentions_and_the_headline_on_the_page(browser, tmp_path):
    """Clips without a prediction (a tie, no label among a server's top-k, a free-text answer naming no label) get a
    card of their own outcome and the reason; the summary shows the headline over every labelled clip (the failed
    one too) beside the scored clips' figure."""
    labels = ["happy", "sad", "neutral"]
    (tmp_path / "labelset.json").write_text(json.dumps({"name": "mine", "labels": labels}))
    rows = [{"video": "ok.mp4", "label": "happy", "scores": {"happy": -0.1, "sad": -3.0, "neutral": -3.0}},
            {"video": "tie.mp4", "label": "sad", "scores": {"happy": -1.0, "sad": -1.0, "neutral": -3.0}},
            {"video": "none.mp4", "label": "sad", "scored": "none", "scores": {"happy": -4.0, "sad": -4.0, "neutral": -4.0}},
            {"video": "words.mp4", "label": "neutral", "scored": "exact", "answer": "Neutral.",
             "scores": {"happy": None, "sad": None, "neutral": 0.0}}]
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps({"labels": labels, **r}) + "\n" for r in rows))
    (tmp_path / "failures.jsonl").write_text(json.dumps({"video": "gone.mp4", "stage": "faces", "error": "NoFaceError",
                                                         "message": "no face", "label": "happy"}) + "\n")
    open_page(browser, write_view(tmp_path))
    assert console_errors(browser) == []
    text = browser.find_element("id", "metrics").text
    assert "Headline: all 5 labelled clips: 1 failed and 2 abstained, counted as errors" in text
    assert "Scored clips only (4, abstentions as errors): UAR" in text and "2 without a prediction" in text
    tile = browser.find_element("css selector", '.tile[data-metric="war"]').text
    assert "40.00" in tile  # ok.mp4 and words.mp4 right, of 5
    for vid, why in (("tie.mp4", "tie"), ("none.mp4", "no label scored")):
        card = browser.find_element("css selector", f'.card[data-id="{vid}"]')
        assert card.find_element("css selector", ".badge").text.lower() == "no prediction"
        assert f"No prediction ({why})" in card.text
    assert browser.find_element("css selector", '.card[data-id="none.mp4"]').find_elements("css selector", ".prob") == []
    words = browser.find_element("css selector", '.card[data-id="words.mp4"]')
    assert words.find_element("css selector", '.prob[data-label="neutral"] .val').text == "1.000"
    open_page(browser, write_view(tmp_path).as_uri() + "#outcome=abstained")
    assert card_ids(browser) == ["tie.mp4", "none.mp4"]
