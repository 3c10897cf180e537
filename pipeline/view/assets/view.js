// dfer view: renders the run embedded in #dfer-data. The filter lives in the URL fragment
// (#true=sad&pred=happy&outcome=incorrect&sort=margin-asc&q=clip), so a view can be shared.
// A small run embeds every card (DATA.cards). A big one embeds an index of the clips (DATA.index: what filters and
// sorts read) and keeps the cards in scripts beside the page (DATA.files.dir/cards-NNNNN.js, DATA.files.chunk cards
// each, calling dferChunk), loaded when one of their cards is shown; thumbnails there are image files, loaded lazily.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("dfer-data").textContent);
  var S = DATA.summary, LABELS = S.labels || [];
  var FILES = DATA.files || null;
  var CARDS = FILES ? DATA.index : DATA.cards;  // one entry per clip, in run order (CARDS[i].n === i)
  CARDS.forEach(function (c, i) { c.n = i; });
  var CHUNKS = {}, LOADING = {};  // chunk number -> its cards; -> callbacks waiting for it
  var PAGE = FILES ? 60 : 150;
  var generation = 0, busy = false;
  var OUTCOMES = [["", "all"], ["correct", "correct"], ["incorrect", "incorrect"], ["failed", "failed"],
    ["abstained", "no prediction"], ["unlabelled", "scored, no label"], ["unscored", "not scored"]];
  var SORTS = [["", "run order"], ["conf-asc", "confidence, low first"], ["conf-desc", "confidence, high first"],
    ["margin-asc", "margin, small first"], ["margin-desc", "margin, large first"]];
  var NO_LABEL = "(none)";
  var state = {}, current = [], shown = 0;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      parent.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return parent;
  }
  function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(2); }
  function sec(t) { return Number(t).toFixed(2) + " s"; }
  function fmtP(p) { return p === null || p === undefined ? "" : p.toFixed(3); }
  function outcomeName(o) {
    for (var i = 0; i < OUTCOMES.length; i++) if (OUTCOMES[i][0] === o) return OUTCOMES[i][1];
    return o;
  }

  // ---------------------------------------------------------------- summary
  function calText(c) {
    if (!c) return "none";
    return c.method + (c.method !== "none" && c.tau !== null ? " (tau " + c.tau + ")" : "");
  }

  function renderSummary() {
    var st = S.status || {};
    $("subtitle").textContent = S.path + (st.status ? " \u2014 " + st.status + ", " + (st.clips || 0) + " clips, " +
      (st.failed || 0) + " failed" : "");
    if (S.missing && S.missing.length) {
      var box = $("missing");
      box.hidden = false;
      S.missing.forEach(function (m) { add(box, el("p", null, m)); });
    }
    var met = $("metrics");
    if (S.metrics) {
      var tiles = el("div", "tiles");
      [["UAR", "uar"], ["WAR", "war"], ["macro-F1", "macro_f1"]].forEach(function (k) {
        var ci = S.metrics.ci && S.metrics.ci[k[1]];
        var t = el("div", "tile");
        add(t, el("small", null, k[0] + " (%)"), el("b", null, pct(S.metrics[k[1]])),
          ci ? el("small", null, "95 % CI " + pct(ci[0]) + "\u2013" + pct(ci[1])) : null);
        t.setAttribute("data-metric", k[1]);
        tiles.appendChild(t);
      });
      add(met, tiles);
      add(met, el("p", null, "Calibration: " + calText(S.calibration) + ". Headline: " + S.headline +
        (S.labels_file ? " (labels from " + S.labels_file.path + ")" : "") + "."));
      if (S.metrics_scored) {
        var v = S.metrics_scored;
        add(met, el("p", "scored-clips", "Scored clips only (" + v.n + ", abstentions as errors): UAR " + pct(v.uar) +
          ", WAR " + pct(v.war) + ", macro-F1 " + pct(v.macro_f1) + "."));
      }
      if (S.metrics_uncalibrated) {
        var u = S.metrics_uncalibrated;
        add(met, el("p", null, "Without calibration: UAR " + pct(u.uar) + ", WAR " + pct(u.war) + ", macro-F1 " +
          pct(u.macro_f1) + "."));
      }
    } else if (S.counts && S.timelines && S.timelines.length) {
      add(met, el("p", null, "The units of this segmented run are segments, which carry no label of their own: " +
        "metrics per labelled span are in report.md (dfer report) and span_predictions.csv."));
    } else if (S.counts) {
      add(met, el("p", null, "No scored clip has a true label, so there are no metrics (pass --labels FILE). " +
        "Calibration: " + calText(S.calibration) + "."));
    }
    if (S.counts) {
      var c = S.counts, fs = Object.keys(c.failed_by_stage || {}).map(function (k) {
        return k + ": " + c.failed_by_stage[k];
      }).join(", ");
      var a = S.abstentions || {};
      add(met, el("p", null, "Clips: " + c.scored + " scored (" + c.scored_labelled + " with a label" +
        (a.count ? ", " + a.count + " without a prediction" : "") + (a.partial ? ", " + a.partial + " partial" : "") +
        "), " + c.failed + " failed" + (fs ? " (" + fs + ")" : "") + "."));
    }
    var keys = Object.keys(S.settings || {});
    if (keys.length) {
      var dl = el("dl");
      keys.forEach(function (k) { add(dl, el("dt", null, k), el("dd", null, S.settings[k])); });
      add($("settings"), dl);
    }
    renderConfusion();
    var notes = S.notes || [];
    if (notes.length) {
      var d = $("notes");
      d.hidden = false;
      d.querySelector("summary").textContent = notes.length + " note" + (notes.length > 1 ? "s" : "") + " from the report";
      notes.forEach(function (n) { add(d.querySelector("ul"), el("li", null, n)); });
    }
  }

  function renderConfusion() {
    var cm = S.confusion;
    if (!cm) return;
    var labels = cm.labels, m = cm.matrix;
    $("confusion").hidden = false;
    var table = el("table");
    add(table, el("caption", null, "Confusion matrix: click a cell to show its clips"));
    var head = el("tr");
    var corner = el("th", "corner");
    add(corner, "true \u2193", el("br"), "predicted \u2192");
    add(head, corner);
    labels.forEach(function (l) { var th = el("th", null, l); th.scope = "col"; head.appendChild(th); });
    add(table, add(el("thead"), head));
    var body = el("tbody");
    labels.forEach(function (t, i) {
      var tr = el("tr");
      var th = el("th", null, t);
      th.scope = "row";
      tr.appendChild(th);
      var total = m[i].reduce(function (a, b) { return a + b; }, 0);
      labels.forEach(function (p, j) {
        var n = m[i][j], share = total ? n / total : 0;
        var b = el("button", "cell" + (i === j ? " diag" : "") + (share > 0.55 ? " dark" : ""), n);
        b.type = "button";
        b.setAttribute("data-true", t);
        b.setAttribute("data-pred", p);
        b.setAttribute("aria-label", "true " + t + ", predicted " + p + ": " + n + " clip" + (n === 1 ? "" : "s"));
        b.title = b.getAttribute("aria-label") + " (" + Math.round(100 * share) + " % of the row)";
        b.style.background = "rgba(47, 95, 168, " + (0.08 + 0.85 * share).toFixed(3) + ")";
        if (!n) { b.style.background = "#fff"; }
        b.addEventListener("click", function () {
          setState({ "true": t, pred: p, outcome: "", q: "", sort: state.sort || "" });
        });
        tr.appendChild(add(el("td"), b));
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    add($("confusion"), table);
  }

  // ---------------------------------------------------------------- controls and state
  function fillSelect(sel, options) {
    options.forEach(function (o) {
      var opt = el("option", null, o[1]);
      opt.value = o[0];
      sel.appendChild(opt);
    });
  }

  function labelOptions(key) {
    var seen = {}, extra = [];
    CARDS.forEach(function (c) {
      var v = c[key];
      if (v !== null && v !== undefined && LABELS.indexOf(v) < 0 && !seen[v]) { seen[v] = 1; extra.push(v); }
    });
    var opts = [["", "all"]].concat(LABELS.concat(extra).map(function (l) { return [l, l]; }));
    opts.push([NO_LABEL, key === "true" ? "no label" : "no prediction"]);
    return opts;
  }

  function initControls() {
    var has = function (key) { return CARDS.some(function (c) { return c[key] !== null; }); };
    $("f-true").parentNode.hidden = !has("true");  // nothing to filter or sort by: no control
    $("f-pred").parentNode.hidden = $("f-sort").parentNode.hidden = !has("pred");
    fillSelect($("f-true"), labelOptions("true"));
    fillSelect($("f-pred"), labelOptions("pred"));
    fillSelect($("f-outcome"), OUTCOMES);
    fillSelect($("f-sort"), SORTS);
    ["f-true", "f-pred", "f-outcome", "f-sort"].forEach(function (id) {
      $(id).addEventListener("change", readControls);
    });
    var timer = null;
    $("f-q").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(readControls, 200);
    });
    $("f-reset").addEventListener("click", function () { setState({}); });
    $("more").addEventListener("click", function () { renderMore(); });
  }

  function readControls() {
    setState({ "true": $("f-true").value, pred: $("f-pred").value, outcome: $("f-outcome").value,
      sort: $("f-sort").value, q: $("f-q").value.trim() });
  }

  function parseHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var st = {};
    ["true", "pred", "outcome", "sort", "q"].forEach(function (k) { st[k] = params.get(k) || ""; });
    return st;
  }

  function setState(st) {
    var params = new URLSearchParams();
    ["true", "pred", "outcome", "sort", "q"].forEach(function (k) { if (st[k]) params.set(k, st[k]); });
    var hash = params.toString();
    if (hash === location.hash.replace(/^#/, "")) { apply(); return; }
    location.replace("#" + hash);  // fires hashchange -> apply(); replace keeps the history short
  }

  function matches(c, st) {
    if (st["true"] && (st["true"] === NO_LABEL ? c["true"] !== null : c["true"] !== st["true"])) return false;
    if (st.pred && (st.pred === NO_LABEL ? c.pred !== null : c.pred !== st.pred)) return false;
    if (st.outcome && c.outcome !== st.outcome) return false;
    if (st.q && c.id.toLowerCase().indexOf(st.q.toLowerCase()) < 0) return false;
    return true;
  }

  function sortCards(list, how) {
    if (!how) return list;
    var parts = how.split("-"), key = parts[0] === "conf" ? "conf" : "margin", dir = parts[1] === "desc" ? -1 : 1;
    return list.slice().sort(function (a, b) {
      var x = a[key], y = b[key];
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return dir * (x - y);
    });
  }

  function apply(after) {
    if (typeof after !== "function") after = null;  // called by the hashchange event, with the event
    state = parseHash();
    $("f-true").value = state["true"];
    $("f-pred").value = state.pred;
    $("f-outcome").value = state.outcome;
    $("f-sort").value = state.sort;
    if ($("f-q").value.trim() !== state.q) $("f-q").value = state.q;
    var cells = document.querySelectorAll(".cell");
    for (var i = 0; i < cells.length; i++) {
      var on = cells[i].getAttribute("data-true") === state["true"] && cells[i].getAttribute("data-pred") === state.pred;
      cells[i].classList.toggle("selected", on);
      cells[i].setAttribute("aria-pressed", on ? "true" : "false");
    }
    current = sortCards(CARDS.filter(function (c) { return matches(c, state); }), state.sort);
    var what = [];
    if (state["true"]) what.push("true " + state["true"]);
    if (state.pred) what.push("predicted " + state.pred);
    if (state.outcome) what.push(outcomeName(state.outcome));
    if (state.q) what.push("id contains \u201c" + state.q + "\u201d");
    $("count").textContent = current.length + " of " + CARDS.length + " clips" +
      (what.length ? " (" + what.join(", ") + ")" : "");
    $("count").setAttribute("data-count", String(current.length));
    $("cards").textContent = "";
    shown = 0;
    generation++;
    busy = false;
    if (!current.length) add($("cards"), el("p", "empty-list", "No clip matches this filter."));
    if (focusId) {  // a timeline's segment was clicked: its card, opened
      var id = focusId, then = after;
      focusId = null;
      after = function () {
        var card = document.querySelector('.card[data-id="' + CSS.escape(id) + '"]');
        if (card) { card.focus(); card.scrollIntoView({ block: "nearest" }); }
        if (then) then();
      };
    }
    renderMore(after);
  }

  // ---------------------------------------------------------------- cards of a big run, loaded as needed
  function chunkFile(k) { return FILES.dir + "/cards-" + ("0000" + k).slice(-5) + ".js"; }

  window.dferChunksLoaded = [];  // which card scripts this page has loaded (the benchmark and the tests read it)
  window.dferChunk = function (k, cards) { CHUNKS[k] = cards; window.dferChunksLoaded.push(k); };

  function loadChunk(k, done) {
    if (CHUNKS[k]) { done(null); return; }
    if (LOADING[k]) { LOADING[k].push(done); return; }
    LOADING[k] = [done];
    var script = document.createElement("script");
    script.src = chunkFile(k);
    script.onload = script.onerror = function () {
      var waiting = LOADING[k];
      delete LOADING[k];
      script.remove();
      var err = CHUNKS[k] ? null : chunkFile(k);
      waiting.forEach(function (cb) { cb(err); });
    };
    document.head.appendChild(script);
  }

  function withCards(entries, done) {
    // the full cards of index entries (in their order), once every chunk they are in has been loaded
    if (!FILES) { done(entries, []); return; }
    var need = {}, keys, left, failed = [];
    entries.forEach(function (e) { need[Math.floor(e.n / FILES.chunk)] = 1; });
    keys = Object.keys(need);
    left = keys.length;
    var finish = function () {
      done(entries.map(function (e) {
        var chunk = CHUNKS[Math.floor(e.n / FILES.chunk)];
        return chunk ? chunk[e.n % FILES.chunk] : null;
      }), failed);
    };
    if (!left) { finish(); return; }
    keys.forEach(function (k) {
      loadChunk(Number(k), function (err) {
        if (err) failed.push(err);
        if (--left === 0) finish();
      });
    });
  }

  // ---------------------------------------------------------------- cards
  function renderMore(after) {
    if (busy) return;
    var gen = generation, start = shown, end = Math.min(current.length, shown + PAGE);
    busy = true;
    document.body.setAttribute("data-pending", "1");
    withCards(current.slice(start, end), function (cards, failed) {
      busy = false;
      if (gen !== generation) return;  // the filter changed while the cards were loading
      var box = $("cards"), frag = document.createDocumentFragment();
      cards.forEach(function (c, j) { if (c) frag.appendChild(renderCard(c, start + j)); });
      failed.forEach(function (f) {
        frag.appendChild(el("p", "load-error", "Could not load " + decodeURIComponent(f) + ": keep the folder " +
          decodeURIComponent(FILES.dir) + " next to this page (the cards of a big run are there)."));
      });
      box.appendChild(frag);
      shown = end;
      var more = $("more");
      more.hidden = shown >= current.length;
      more.textContent = "Show more (" + (current.length - shown) + " left)";
      document.body.setAttribute("data-pending", "0");
      if (after) after();
    });
  }

  function renderTimeline(c) {
    var ol = el("ol", "timeline");
    ol.setAttribute("aria-label", "what the classifier saw, in prompt order");
    c.timeline.forEach(function (it) {
      if (it.type === "frame") {
        var li = el("li", "frame");
        if (it.src) {
          var img = el("img");
          img.loading = "lazy";
          img.src = it.src;
          img.alt = "face at " + sec(it.t);
          img.width = 80;
          img.height = 80;
          li.appendChild(img);
        } else {
          li.appendChild(el("span", "noimg", "no crop"));
        }
        add(li, el("span", "t", sec(it.t)));
        ol.appendChild(li);
      } else {
        var g = el("li", "gap");
        var t = el("span", "t", sec(it.t_start) + " \u2013 " + sec(it.t_end));
        if (it.kind) add(t, el("span", "kind", it.kind.replace(/_/g, "-")));
        if (it.cuts && it.cuts.length) {
          var cut = el("span", "cut", "cut " + it.cuts.map(sec).join(", "));
          cut.title = "the shot changes here: the frames on either side are different shots";
          add(t, cut);
        }
        add(g, t, it.text ? el("p", null, it.text) : el("p", "empty", "no summary"));
        if (it.captions && it.captions.length > 1) {
          var d = el("details"), ul = el("ul");
          add(d, el("summary", null, it.captions.length + " window captions"));
          it.captions.forEach(function (w) { add(ul, el("li", null, sec(w.t_start) + "\u2013" + sec(w.t_end) + ": " + w.text)); });
          add(d, ul);
          g.appendChild(d);
        }
        ol.appendChild(g);
      }
    });
    return ol;
  }

  function renderProbs(c) {
    var box = el("div", "probs");
    box.setAttribute("aria-label", "label probabilities");
    var order = LABELS.map(function (l, i) { return i; });
    order.forEach(function (i) {
      var lab = LABELS[i], p = c.probs[i];
      var row = el("div", "prob" + (lab === c.pred ? " pred" : "") + (lab === c["true"] ? " true" : ""));
      row.setAttribute("data-label", lab);
      var fill = el("div", "fill");
      fill.style.width = (100 * p).toFixed(1) + "%";
      var inexact = c.inexact && c.inexact.indexOf(lab) >= 0;
      add(row, el("span", "lab", lab), add(el("span", "track"), fill), el("span", "val", (inexact ? "\u2264" : "") + fmtP(p)));
      row.title = lab + ": " + fmtP(p) + (lab === c.pred ? " (predicted)" : "") + (lab === c["true"] ? " (true label)" : "") +
        (inexact ? " (upper bound: not in the server's top tokens)" : "");
      box.appendChild(row);
    });
    add(box, el("p", "legend", (c["true"] !== null ? "\u2605 true label, " : "") + "bold: predicted; calibration " +
      calText(S.calibration)));
    return box;
  }

  function renderCard(c, pos) {
    var card = el("article", "card " + c.outcome);
    card.tabIndex = 0;
    card.setAttribute("data-id", c.id);
    card.setAttribute("data-pos", String(pos));
    var head = el("header");
    add(head, el("h3", null, c.id), el("span", "badge " + c.outcome, outcomeName(c.outcome)));
    var who = el("span", "who");
    if (c["true"] !== null) add(who, "true ", el("b", null, c["true"]));
    if (c.pred !== null) add(who, (c["true"] !== null ? " \u00b7 " : "") + "predicted ", el("b", null, c.pred),
      " (" + fmtP(c.conf) + ", margin " + fmtP(c.margin) + ")");
    add(head, who);
    if (c.model) add(head, el("span", "model", c.model));
    card.setAttribute("aria-label", c.id + ": " + outcomeName(c.outcome) +
      (c["true"] !== null ? ", true " + c["true"] : "") + (c.pred !== null ? ", predicted " + c.pred : ""));
    card.appendChild(head);
    var body = el("div", "body" + (c.probs ? "" : " noprobs"));
    var left = el("div", "left");
    if (c.timeline.length) left.appendChild(renderTimeline(c));
    if (c.trajectory) add(left, el("p", "trajectory", "Trajectory: " + c.trajectory));
    body.appendChild(left);
    if (c.probs) body.appendChild(renderProbs(c));
    card.appendChild(body);
    if (c.failure) {
      var f = c.failure;
      add(card, el("div", "failure", "Failed at stage " + f.stage + " (" + f.error + "): " + f.message));
    }
    (c.notes || []).forEach(function (n) { add(card, el("p", "note", n)); });
    return card;
  }

  // ---------------------------------------------------------------- keyboard
  function focusCard(step) {
    var cards = $("cards").querySelectorAll(".card");
    if (!cards.length) return;
    var active = document.activeElement, i = -1;
    if (active && active.classList && active.classList.contains("card")) i = Number(active.getAttribute("data-pos"));
    var next = i < 0 ? 0 : i + step;
    var go = function () {
      cards = $("cards").querySelectorAll(".card");
      next = Math.max(0, Math.min(cards.length - 1, next));
      cards[next].focus();
      cards[next].scrollIntoView({ block: "nearest" });
    };
    if (next >= cards.length && shown < current.length) renderMore(go);
    else go();
  }

  function onKey(ev) {
    var tag = (ev.target && ev.target.tagName) || "";
    var typing = tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA";
    if (ev.key === "Escape") { setState({}); if (typing) ev.target.blur(); return; }
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "j") { focusCard(1); ev.preventDefault(); }
    else if (ev.key === "k") { focusCard(-1); ev.preventDefault(); }
    else if (ev.key === "/") { $("f-q").focus(); ev.preventDefault(); }
  }

  // ---------------------------------------------------------------- timelines (a segmented run)
  var focusId = null;  // the card to focus once the filter that shows it has been applied
  function labelColour(label) {
    var i = LABELS.indexOf(label);
    return "hsl(" + Math.round((i < 0 ? 0 : i) * 360 / Math.max(1, LABELS.length)) + ", 65%, 55%)";
  }
  function renderTimelines() {
    var T = S.timelines;
    if (!T || !T.length) return;
    $("timelines").hidden = false;
    var box = $("strips"), legend = el("p", "strip-legend");
    LABELS.forEach(function (l) {
      var i = el("i");
      i.style.background = labelColour(l);
      add(legend, add(el("span"), i, l));
    });
    box.appendChild(legend);
    T.forEach(function (t) {
      var row = el("div", "strip-row"), strip = el("div", "strip");
      var name = t.video + (t.subject ? " (person " + t.subject + ")" : "");
      add(row, el("span", "strip-name", name), strip);
      strip.setAttribute("data-video", t.video);
      strip.setAttribute("role", "group");
      strip.setAttribute("aria-label", "timeline of " + name);
      t.segments.forEach(function (g) {
        var b = el("button", "seg" + (g.pred ? "" : " none"));
        b.type = "button";
        b.style.left = (100 * g.from / t.duration) + "%";
        b.style.width = (100 * (g.to - g.from) / t.duration) + "%";
        if (g.pred) b.style.background = labelColour(g.pred);
        var text = sec(g.start) + "\u2013" + sec(g.end) + ": " + (g.pred || "not scored (" + g.why + ")");
        b.title = text;
        b.setAttribute("aria-label", text);
        if (g.id) {
          b.setAttribute("data-id", g.id);
          b.addEventListener("click", function () { focusId = g.id; setState({ q: g.id }); });
        } else {
          b.disabled = true;
        }
        strip.appendChild(b);
      });
      box.appendChild(row);
    });
  }

  // ---------------------------------------------------------------- start
  renderSummary();
  renderTimelines();
  initControls();
  window.addEventListener("hashchange", apply);
  document.addEventListener("keydown", onKey);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      if (entries[0].isIntersecting && shown < current.length) renderMore();
    }).observe($("more"));
  }
  apply(function () {
    document.body.setAttribute("data-ready", "1");
    window.dferReadyMs = performance.now();
  });
})();
