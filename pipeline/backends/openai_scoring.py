"""Label scoring on an OpenAI-compatible server: which answer tokens are a label's, how the server is asked for their
log-probabilities, and how its answer becomes one :class:`LabelScore` per label (the ``openai`` backend's half
that knows about labels; the requests themselves are :mod:`pipeline.backends.openai_http`'s).

Label tokens (:func:`label_tokens`, before any clip)
    A label is written as the model's chat template writes the assistant's answer, as the transformers backend
    scores it (:mod:`pipeline.backends.hf_templates`): where the server renders chat messages to tokens (vLLM's
    ``POST /tokenize`` with ``messages``), it is asked for a user turn with the generation prompt and for the same
    turn followed by an assistant turn holding the label (``continue_final_message``); the tokens after the
    generation prompt are the label's answer, and their first id is the label's token (``happy`` bare after Qwen's
    ``assistant\\n``). Where it cannot (or the two renderings do not share the generation prompt), a label is
    looked for in two forms, as an answer may start: bare (``happy``) and after a space (`` happy``, after
    SmolVLM's ``Assistant:``). Each form is tokenized with the server's tokenizer (``POST /tokenize`` at the
    server's root, as vLLM, SGLang and llama.cpp serve it), or else with a local copy of the served model's
    tokenizer (a folder, or the Hugging Face cache; never downloaded; its chat template used as the server's
    would be); the label's tokens are the **first token id of each form**, and its text where the server returns
    token text only. Two labels that
    share a first token id could never be told apart and are refused, naming them and how to fix it. A token that
    merely begins like a label (``' D'`` for disgust, ``'a'`` for angry) is never the label's.

How the server is asked (:class:`ScoringPlan`, settled by one preflight request with an image)
    One chat completion per clip with ``max_completion_tokens=1, logprobs=true, top_logprobs=k`` (k = 20, the usual
    server cap). Where labels are tokenized, the request also carries vLLM's ``logprob_token_ids`` (the label
    tokens) and ``return_tokens_as_token_ids``; a server that rejects them (HTTP 400) is asked again without. What
    the server does with them decides the rule, recorded per clip and in ``status.json`` and ``report.md``:

    * ``logprob_token_ids``: the server returned the log-probability of every label token (vLLM): every label
      scored exactly, whatever its rank;
    * ``top-k token ids``: the top-k tokens come back as ids: a label is scored where one of its token ids is
      among them;
    * ``top-k token text``: the top-k tokens come back as text only: a label is scored where the text of one of
      its tokens (as the tokenizer decodes it) is among them, compared whole;
    * ``top-k whole-label text`` (no tokenizer at all, the fallback): a label is scored only where a top-k token's
      text is the whole label, bare or after a space; a label of several tokens is then never found.

    A label's score is the log-probability of its first token (the larger of its two forms' first tokens where the
    chat template's form is unknown) (``n_tokens=1``: a server gives the
    first answer token only). A label none of whose tokens is among the top-k gets the k-th (smallest) returned
    log-probability with ``exact=False``: an upper bound, not its value (:mod:`pipeline.eval.ranking`: such clips are
    ``partial``, or ``none`` when no label was found, an abstention).

    A server that returns no log-probabilities at all (``transformers serve`` ignores ``logprobs``) fails the
    preflight request: the run stops before any clip, naming the server, the model and what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from pipeline.backends.base import LabelScore, ModelConfig
from pipeline.core.errors import BackendRequestError, LabelScoringUnsupportedError

FORMS = ("bare", "after a space")
RULES = ("logprob_token_ids", "top-k token ids", "top-k token text", "top-k whole-label text")
TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids


def server_root(cfg: ModelConfig) -> str:
    """The server's root URL (``server_url`` without a trailing ``/v1``): where vLLM serves ``/tokenize``."""
    base = cfg.server_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def headers(cfg: ModelConfig) -> dict:
    key = os.environ.get(cfg.api_key_env)
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}


# ------------------------------------------------------------------------------------------------ tokenizers


@dataclass
class _Tokenizer:
    source: str  # in words, for messages
    encode: Callable[[list[str]], list[list[int]] | None]
    decode: Callable[[int], str | None]
    chat: Callable[[list[dict], bool], list[int] | None] | None = None  # messages, generation prompt? -> token ids


PROBE_USER = {"role": "user", "content": "Answer with one word."}


def answer_tokens(tokenizer: _Tokenizer, labels: list[str]) -> dict[str, list[int]] | None:
    """Each label's tokens as the chat template writes the assistant's answer (module docstring): the tokens of a user
    turn plus an assistant turn holding the label (continued, not closed) after those of the user turn with the
    generation prompt; None where the tokenizer renders no chat or a rendering does not begin with the generation
    prompt."""
    if tokenizer.chat is None:
        return None
    prompt = tokenizer.chat([PROBE_USER], True)
    if not prompt:
        return None
    out = {}
    for label in labels:
        full = tokenizer.chat([PROBE_USER, {"role": "assistant", "content": label.strip()}], False)
        if not full or full[: len(prompt)] != prompt or len(full) == len(prompt):
            return None
        out[label] = full[len(prompt):]
    return out


def _server_tokenizer(cfg: ModelConfig, timeout_s: float = 10.0) -> _Tokenizer | None:
    """The server's ``/tokenize`` (at its root, then under ``server_url``) and ``/detokenize``, if it has them."""
    import requests

    base = cfg.server_url.rstrip("/")
    roots = list(dict.fromkeys([server_root(cfg), base]))
    timeout = min(timeout_s, cfg.timeout_s)

    def post(url: str, body: dict):
        try:
            resp = requests.post(url, json=body, headers=headers(cfg), timeout=timeout)
            return resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def encode_at(root: str, texts: list[str]) -> list[list[int]] | None:
        out = []
        for text in texts:  # content: llama.cpp's name for the text
            ans = post(root + "/tokenize", {"model": cfg.model, "prompt": text, "add_special_tokens": False, "content": text})
            tokens = ans.get("tokens") if isinstance(ans, dict) else None
            if tokens and isinstance(tokens[0], list):  # SGLang answers a batch shape
                tokens = tokens[0]
            if not tokens or not all(isinstance(t, int) for t in tokens):
                return None
            out.append(tokens)
        return out

    for root in roots:
        if encode_at(root, ["happy"]) is None:
            continue

        def decode(token_id: int, root=root) -> str | None:
            ans = post(root + "/detokenize", {"model": cfg.model, "tokens": [token_id]})
            text = (ans.get("prompt") or ans.get("content")) if isinstance(ans, dict) else None  # vLLM / llama.cpp
            return text if isinstance(text, str) else None

        def chat(messages: list[dict], generation_prompt: bool, root=root) -> list[int] | None:
            ans = post(root + "/tokenize", {"model": cfg.model, "messages": messages,
                                            "add_generation_prompt": generation_prompt,
                                            "continue_final_message": not generation_prompt})
            tokens = ans.get("tokens") if isinstance(ans, dict) else None
            return tokens if tokens and all(isinstance(t, int) for t in tokens) else None

        return _Tokenizer(f"the tokenizer of the server at {cfg.server_url} (POST {root}/tokenize)",
                          lambda texts, root=root: encode_at(root, texts), decode, chat)
    return None


def _local_tokenizer(cfg: ModelConfig) -> _Tokenizer | None:
    """A local copy of the served model's tokenizer (a folder, or the Hugging Face cache; nothing is downloaded)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(os.path.expanduser(cfg.model), revision=cfg.revision, local_files_only=True,
                                            trust_remote_code=cfg.trust_remote_code)
    except Exception:
        return None

    def chat(messages: list[dict], generation_prompt: bool) -> list[int] | None:
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                          continue_final_message=not generation_prompt, tokenize=True, return_dict=True)
            return list(ids["input_ids"])
        except Exception:
            return None

    return _Tokenizer(f"a local copy of {cfg.model!r}'s tokenizer",
                      lambda texts: [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
                      lambda token_id: tok.decode([token_id]), chat if getattr(tok, "chat_template", None) else None)


# ------------------------------------------------------------------------------------------------ label tokens


@dataclass(frozen=True)
class LabelTokens:
    """Each label's answer tokens: ``ids`` (first token id of each form; empty without a tokenizer) and ``texts`` (the
    text of those tokens; without a tokenizer, the whole forms), and ``source``, the tokenizer in words."""

    ids: dict[str, tuple[int, ...]]
    texts: dict[str, tuple[str, ...]]
    source: str

    @property
    def tokenized(self) -> bool:
        return bool(self.ids)

    def all_ids(self) -> list[int]:
        return sorted({i for ids in self.ids.values() for i in ids})


def label_tokens(cfg: ModelConfig, labels: list[str]) -> LabelTokens:
    """The labels' tokens (module docstring). Raises :class:`LabelScoringUnsupportedError` naming labels that share a
    first token id."""
    forms = {lab: [lab.strip(), " " + lab.strip()] for lab in labels}
    flat = [f for lab in labels for f in forms[lab]]
    for find in (_server_tokenizer, _local_tokenizer):
        tokenizer = find(cfg)
        if tokenizer is None:
            continue
        encoded = tokenizer.encode(flat)
        if encoded is None:
            continue
        toks = dict(zip(flat, encoded))
        answers = answer_tokens(tokenizer, labels)
        if answers is not None:
            return _template_tokens(cfg, tokenizer, labels, answers, forms, toks)
        firsts = {lab: [toks[f][0] if toks[f] else None for f in forms[lab]] for lab in labels}
        _refuse_shared_first_tokens(cfg, firsts, tokenizer.source)
        ids = {lab: tuple(dict.fromkeys(i for i in firsts[lab] if i is not None)) for lab in labels}
        texts = {lab: tuple(dict.fromkeys(t for t in (_first_token_text(tokenizer, f, toks[f]) for f in forms[lab])
                                          if t)) for lab in labels}
        return LabelTokens(ids, texts, tokenizer.source)
    return LabelTokens({}, {lab: tuple(forms[lab]) for lab in labels},
                       f"no tokenizer (the server at {cfg.server_url} offers no /tokenize and no local copy of "
                       f"{cfg.model!r}'s tokenizer was found)")


def _template_tokens(cfg: ModelConfig, tokenizer: _Tokenizer, labels: list[str], answers: dict[str, list[int]],
                     forms: dict[str, list[str]], toks: dict[str, list[int]]) -> LabelTokens:
    """The labels' tokens where the chat template's answer is known: one first token id each, its text that of the
    form (bare, after a space) that begins with it, else the token decoded."""
    how = "the answer as its chat template writes it"
    _refuse_shared_first_tokens(cfg, {lab: [answers[lab][0]] for lab in labels}, tokenizer.source, (how,))
    texts = {}
    for lab in labels:
        first = answers[lab][0]
        form = next((f for f in forms[lab] if toks[f] and toks[f][0] == first), None)
        text = _first_token_text(tokenizer, form, toks[form]) if form else tokenizer.decode(first)
        texts[lab] = (text,) if text else ()
    return LabelTokens({lab: (answers[lab][0],) for lab in labels}, texts, f"{tokenizer.source}, {how}")


def _first_token_text(tokenizer: _Tokenizer, form: str, ids: list[int]) -> str | None:
    """The text of ``form``'s first token: the form itself when it is one token, else the token decoded, else (a
    server without ``/detokenize``) the longest beginning of the form that is that token alone."""
    if not ids:
        return None
    if len(ids) == 1:
        return form
    text = tokenizer.decode(ids[0])
    if text:
        return text
    starts = [form[:n] for n in range(1, len(form))]
    encoded = tokenizer.encode(starts) or []
    alone = [start for start, toks in zip(starts, encoded) if toks == [ids[0]]]
    return alone[-1] if alone else None


def _refuse_shared_first_tokens(cfg: ModelConfig, per_label: dict[str, list[int | None]], source: str,
                                names: tuple[str, ...] = FORMS) -> None:
    owners: dict[int, dict[str, list[str]]] = {}  # token id -> label -> the forms it begins
    for lab, firsts in per_label.items():
        for form, token_id in zip(names, firsts):
            if token_id is not None:
                owners.setdefault(token_id, {}).setdefault(lab, []).append(form)
    clashes = []
    for token_id, labs in owners.items():
        if len(labs) > 1:
            clashes.append(" and ".join(repr(lab) for lab in labs) + f" (first token id {token_id}, written "
                           + " / ".join(dict.fromkeys(f for forms in labs.values() for f in forms)) + ")")
    if clashes:
        raise LabelScoringUnsupportedError(
            f"model {cfg.model!r} (backend openai) cannot tell these labels apart: {'; '.join(clashes)}, judged by "
            f"{source}. A server scores a label by its first answer token only, so such labels would always get the "
            "same score. Fix: use a label file (classify.labels=my_labels.yaml, like prompts/labels/*.yaml) that "
            "names these classes by words whose first tokens differ and keeps the official words as aliases, so "
            "annotation files still match (e.g. '- name: letdown' with 'aliases: [disappointment, \"11\"]'); or "
            "use the transformers backend, which scores every token of a label.")


# ------------------------------------------------------------------------------------------------ the plan


def top_entries(data: dict) -> list[dict] | None:
    """The answer's first position's ``top_logprobs`` entries (chat layout, or the legacy completions layout), or
    None when the answer has none."""
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        entries = content[0].get("top_logprobs")
        if isinstance(entries, list) and entries:
            return [e for e in entries if isinstance(e, dict) and isinstance(e.get("logprob"), (int, float))] or None
        return None
    legacy = lp.get("top_logprobs")
    if isinstance(legacy, list) and legacy and isinstance(legacy[0], dict):
        return [{"token": t, "logprob": float(v)} for t, v in legacy[0].items()] or None
    return None


def entry_id(entry: dict) -> int | None:
    """A top-logprobs entry's token id, where the server gives it (vLLM: ``"token_id:N"``; llama.cpp: ``id``)."""
    if isinstance(entry.get("id"), int):
        return entry["id"]
    token = entry.get("token")
    if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX):])
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class ScoringPlan:
    """How one server is asked for label scores and how its answers are read (module docstring)."""

    tokens: LabelTokens
    rule: str  # one of RULES
    k: int
    extensions: bool = field(default=False)  # send vLLM's return_tokens_as_token_ids ...
    ask_ids: bool = field(default=True)  # ... and logprob_token_ids

    def request(self) -> dict:
        """The scoring fields of a chat-completions request."""
        body = {"max_completion_tokens": 1, "logprobs": True, "top_logprobs": self.k}
        if self.extensions:
            body["return_tokens_as_token_ids"] = True
            if self.ask_ids:
                body["logprob_token_ids"] = self.tokens.all_ids()
        return body

    @property
    def description(self) -> str:
        """The label-matching rule in words (``status.json``, ``report.md``)."""
        how = {
            "logprob_token_ids": "every label's first token ids, asked for by id (vLLM's logprob_token_ids): "
                                 "every label scored",
            "top-k token ids": f"the label's first token ids among the top {self.k} answer tokens",
            "top-k token text": f"the text of the label's first tokens among the top {self.k} answer tokens "
                                "(the server returns no token ids), compared whole",
            "top-k whole-label text": f"fallback: a top-{self.k} answer token whose text is the whole label, bare or "
                                      "after a space; a label of several tokens is never found",
        }[self.rule]
        return f"{how}; label tokens from {self.tokens.source}"

    def read(self, data: dict, where: str) -> dict[str, LabelScore]:
        """One answer's label scores (module docstring). ``where`` names the server and model in errors."""
        entries = top_entries(data)
        if not entries:
            raise LabelScoringUnsupportedError(f"{where} returned no top_logprobs for a scoring request")
        if self.rule in ("logprob_token_ids", "top-k token ids"):
            have: dict = {}
            for e in entries:
                token_id = entry_id(e)
                if token_id is not None:
                    have[token_id] = max(float(e["logprob"]), have.get(token_id, float("-inf")))
            keys = self.tokens.ids
            if self.rule == "logprob_token_ids":
                missing = [i for i in self.tokens.all_ids() if i not in have]
                if missing:
                    raise BackendRequestError(f"{where} did not return the log-probability of token id(s) {missing} "
                                              "it was asked for (logprob_token_ids)")
        else:
            have = {}
            for e in entries:
                text = e.get("token")
                if isinstance(text, str):
                    have[text] = max(float(e["logprob"]), have.get(text, float("-inf")))
            keys = self.tokens.texts
        top = [float(e["logprob"]) for e in entries]
        floor = min(top) if self.rule != "logprob_token_ids" else None
        out = {}
        for label, tokens in keys.items():
            found = [have[t] for t in tokens if t in have]
            if found:
                out[label] = LabelScore(logprob=max(found), n_tokens=1, exact=True)
            else:
                out[label] = LabelScore(logprob=floor, n_tokens=1, exact=False)
        return out


def settle_plan(sent: ScoringPlan, answer: dict) -> ScoringPlan:
    """The plan a preflight answer allows (``answer``: the server's reply to ``sent.request()``). Raises
    :class:`LabelScoringUnsupportedError` when it has no top_logprobs."""
    entries = top_entries(answer)
    if not entries:
        raise LabelScoringUnsupportedError("no top_logprobs")
    tokens, k, ext, ask = sent.tokens, sent.k, sent.extensions, sent.ask_ids
    if not tokens.tokenized:
        return ScoringPlan(tokens, "top-k whole-label text", k)
    ids = {entry_id(e) for e in entries}
    if ext and ask and set(tokens.all_ids()) <= ids:
        return ScoringPlan(tokens, "logprob_token_ids", k, ext, ask)
    if ids - {None}:
        return ScoringPlan(tokens, "top-k token ids", k, ext, ask)
    return ScoringPlan(tokens, "top-k token text", k, ext, ask)
