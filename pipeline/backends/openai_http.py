"""OpenAI-compatible HTTP backend (vLLM, SGLang, Ollama, llama.cpp ``llama-server``, ...), using ``requests``.

Requests
    ``POST {server_url}/chat/completions`` with one user message whose content lists the prompt's parts in order:
    text parts as ``{"type": "text"}`` and images as ``{"type": "image_url", "image_url": {"url":
    "data:image/jpeg;base64,..."}}`` (RGB JPEG, quality 95, downscaled first if ``image_max_side`` is set), plus an
    optional system message. Up to ``max_concurrency`` requests are in flight (a thread pool). A request that
    gets HTTP 429/500/502/503/504, a connection error or a timeout is retried up to ``max_retries`` times with
    exponential backoff and full jitter, waiting at least what a ``Retry-After`` header asks for (capped at 60 s).
    Other 4xx answers fail at once with the server's error text (:class:`BackendRequestError`); a server that
    cannot be reached at all after the retries raises :class:`ModelLoadError` naming the URL.

Generation
    ``temperature=0``, ``max_tokens=max_new_tokens``; returns ``choices[0].message.content``.

Label scoring: first token only, from ``top_logprobs``
    One request per prompt with ``max_tokens=1, logprobs=true, top_logprobs=k`` (k=20 by default, the usual
    server cap); the answer distribution is read at position 0 (``choices[0].logprobs.content[0].top_logprobs``).
    The server's tokenizer is unknown here, so top-k tokens are matched to labels by text:

    * a token *matches* a label when its text, stripped of whitespace (and of the byte-level/SentencePiece space
      markers ``Ġ``/``▁``) and case-folded, is a non-empty prefix of the label (also case-folded);
    * for each label the longest matching token text wins, and all top-k entries with that same normalised text
      (``happy``, `` happy``, ``Happy``...) are added up in probability (log-sum-exp): the model answering
      with any spelling variant of the label's first piece counts for that label;
    * the result is reported with ``n_tokens=1``: a multi-token label is represented by its first token only, and
      labels that share a first token (``sad``/``sadness`` in a tokenizer without a ``sadness`` token) get the
      same score;
    * a label with no matching token in the top-k gets the k-th (smallest) returned logprob with
      ``exact=False``: an upper bound on its first token's probability, not its value.

    Limits of the heuristic: a short token that happens to be a prefix of a label (``a`` for ``anger``) is taken
    as that label's first token if nothing longer matches, so keep labels distinct in their first few letters
    and ask for a one-word answer; a model that begins its answer with whitespace, a quote or a preamble puts
    little mass on any label at position 0 (use a prompt that makes the label the first thing it writes). For
    exact multi-token scores, use the ``transformers`` backend.

    A server that returns no logprobs at all raises :class:`LabelScoringUnsupportedError` (use vLLM or SGLang,
    whose chat endpoints return ``top_logprobs``).

Labels that share a first token (:func:`check_label_first_tokens`, before any clip)
    First-token scoring cannot tell apart labels whose first tokens are the same: they always get the same score
    and ``argmax`` gives every such tie to the label listed first (with a tokenizer that splits ``disappointment``
    after ``dis``, a model answering "disgust"-or-"disappointment" always counts as the first). So before any clip
    the labels are tokenized, bare and after a space (the two ways an answer starts), with the server's
    tokenizer (``POST /tokenize``, as vLLM, SGLang and llama.cpp serve it at the server's root), or else with a
    local copy of the served model's tokenizer (Hugging Face cache, never downloaded); labels sharing a first
    token id are refused with an error that names them and says how to fix it. With neither tokenizer, labels
    whose first two letters (case-folded) are the same are refused: a conservative stand-in, since a shared
    first token needs a shared first letter and real vocabularies rarely end a word's first token after one.

Prompt length
    ``count_prompt_tokens`` sends ``max_tokens=1`` and reads ``usage.prompt_tokens``.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

from pipeline.backends.base import Backend, LabelScore, ModelConfig, Prompt, Video, prepare_image
from pipeline.core.errors import (BackendRequestError, LabelScoringUnsupportedError, ModelLoadError, ModelUnavailableError,
                             ServerDownError, VideoInputUnsupportedError)

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0


def image_to_data_url(image, max_side: int | None = None, quality: int = 95) -> str:
    """``data:image/jpeg;base64,...`` of an RGB JPEG of the image (downscaled to ``max_side`` if given)."""
    img = prepare_image(image, max_side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def prompt_to_messages(prompt: Prompt, image_max_side: int | None = None) -> list[dict]:
    """OpenAI chat messages for one :class:`Prompt` (parts kept in order)."""
    content = []
    for part in prompt.parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        elif isinstance(part, Video):
            raise VideoInputUnsupportedError("the openai backend sends images only; use classify.dense_input=images")
        else:
            content.append({"type": "image_url", "image_url": {"url": image_to_data_url(part, image_max_side)}})
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return [*system, {"role": "user", "content": content}]


def normalise_token(text: str) -> str:
    """Token text for label matching: space markers dropped, whitespace stripped, case-folded."""
    return text.replace("\u0120", " ").replace("\u2581", " ").replace("\u010a", "\n").strip().casefold()


def match_top_tokens(top: list[tuple[str, float]], labels: list[str]) -> dict[str, LabelScore]:
    """Apply the first-token matching heuristic (module docstring) to one position's top-k list."""
    if not top:
        raise LabelScoringUnsupportedError("the server returned an empty top_logprobs list")
    floor = min(lp for _, lp in top)
    norm = [(normalise_token(tok), lp) for tok, lp in top]
    out = {}
    for label in labels:
        target = label.strip().casefold()
        hits = [(n, lp) for n, lp in norm if n and target.startswith(n)]
        if not hits:
            out[label] = LabelScore(logprob=floor, n_tokens=1, exact=False)
            continue
        best = max(len(n) for n, _ in hits)
        lps = [lp for n, lp in hits if len(n) == best]
        m = max(lps)
        out[label] = LabelScore(logprob=m + math.log(sum(math.exp(v - m) for v in lps)), n_tokens=1, exact=True)
    return out


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number, or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _base_url(cfg: ModelConfig) -> str:
    if not cfg.server_url:
        raise ModelLoadError(f"backend='openai' for model {cfg.model!r} needs server_url (e.g. http://127.0.0.1:8000/v1)")
    return cfg.server_url.rstrip("/")


def _headers(cfg: ModelConfig) -> dict:
    key = os.environ.get(cfg.api_key_env)
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}


def check_server_available(cfg: ModelConfig, timeout_s: float = 10.0) -> None:
    """``GET {server_url}/models``: raises :class:`ModelLoadError` if the server is down or answers with an error,
    :class:`ModelUnavailableError` if it does not serve ``cfg.model``."""
    import requests

    url = _base_url(cfg) + "/models"
    try:
        resp = requests.get(url, headers=_headers(cfg), timeout=min(timeout_s, cfg.timeout_s))
    except requests.RequestException as exc:
        raise ModelLoadError(
            f"The model server at {cfg.server_url} cannot be reached (GET {url}: {type(exc).__name__}: {exc}). "
            "Start the server (e.g. `vllm serve <model>`) or fix classify.model.server_url."
        ) from exc
    if resp.status_code != 200:
        raise ModelLoadError(f"The model server at {cfg.server_url} answered GET {url} with HTTP {resp.status_code}: {resp.text[:300]}")
    try:
        served = [m.get("id") for m in resp.json().get("data", [])]
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"The model server at {cfg.server_url} returned a malformed /models answer") from exc
    if served and cfg.model not in served:
        raise ModelUnavailableError(f"The server at {cfg.server_url} does not serve model {cfg.model!r}; it serves "
                                    f"{served}. Set the model name to one of these.")


def _tokenize_on_server(cfg: ModelConfig, texts: list[str], timeout_s: float = 10.0) -> list[list[int]] | None:
    """Token ids of each text under the server's tokenizer (``POST /tokenize`` at the server's root, then under
    ``server_url``), without special tokens; None if the server has no such endpoint."""
    import requests

    base = _base_url(cfg)
    roots = [base[: -len("/v1")]] if base.endswith("/v1") else []
    for url in [r + "/tokenize" for r in roots] + [base + "/tokenize"]:
        out = []
        for text in texts:
            body = {"model": cfg.model, "prompt": text, "add_special_tokens": False, "content": text}  # content: llama.cpp
            try:
                resp = requests.post(url, json=body, headers=_headers(cfg), timeout=min(timeout_s, cfg.timeout_s))
                tokens = resp.json().get("tokens") if resp.status_code == 200 else None
            except (requests.RequestException, ValueError, AttributeError):
                tokens = None
            if tokens and isinstance(tokens[0], list):  # SGLang answers a batch shape for list prompts
                tokens = tokens[0]
            if not tokens or not all(isinstance(t, int) for t in tokens):
                break
            out.append(tokens)
        if len(out) == len(texts):
            return out
    return None


def _tokenize_locally(cfg: ModelConfig, texts: list[str]) -> list[list[int]] | None:
    """Token ids under a local copy of the served model's tokenizer (a folder, or the Hugging Face cache; nothing
    is downloaded); None if there is none."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(os.path.expanduser(cfg.model), revision=cfg.revision, local_files_only=True,
                                            trust_remote_code=cfg.trust_remote_code)
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    except Exception:
        return None


def check_label_first_tokens(cfg: ModelConfig, labels: list[str]) -> str:
    """Refuse labels that first-token scoring cannot tell apart (module docstring). Raises
    :class:`LabelScoringUnsupportedError` naming them; returns which tokenizer was used."""
    forms = [lab.strip() for lab in labels] + [" " + lab.strip() for lab in labels]
    ids, source = _tokenize_on_server(cfg, forms), f"the tokenizer of the server at {cfg.server_url}"
    if ids is None:
        ids, source = _tokenize_locally(cfg, forms), f"a local copy of {cfg.model!r}'s tokenizer"
    groups: dict[tuple, list[str]] = {}
    if ids is None:
        source = (f"their spelling (the server at {cfg.server_url} offers no /tokenize and no local copy of "
                  f"{cfg.model!r}'s tokenizer was found; labels with the same first two letters may share a first token)")
        for lab in labels:
            groups.setdefault(("letters", lab.strip().casefold()[:2]), []).append(lab)
    else:
        n = len(labels)
        for k, lab in enumerate(labels):
            for form, toks in (("bare", ids[k]), ("after a space", ids[n + k])):
                if toks:
                    groups.setdefault((form, toks[0]), []).append(lab)
    clashes = []
    for key, members in groups.items():
        if len(members) > 1 and sorted(members) not in [sorted(c[1]) for c in clashes]:
            clashes.append((key, members))
    if clashes:
        what = "; ".join(
            " and ".join(repr(m) for m in members)
            + (f" (first token id {key[1]}, written {key[0]})" if key[0] != "letters" else f" (both begin with {key[1]!r})")
            for key, members in clashes
        )
        raise LabelScoringUnsupportedError(
            f"model {cfg.model!r} (backend openai) cannot tell these labels apart: {what}, judged by {source}. A server "
            "scores a label by its first token only, so such labels always tie and the tie goes to the one listed "
            "first: a silent bias against the others. Fix: use a label file (classify.labels=my_labels.yaml, like "
            "prompts/labels/*.yaml) that names these classes by words whose first tokens differ and keeps the "
            "official words as aliases, so annotation files still match (e.g. '- name: letdown' with "
            "'aliases: [disappointment, \"11\"]'); or use the transformers backend, which scores every token of a label."
        )
    return source


class OpenAIBackend(Backend):
    """See the module docstring.

    ``top_logprobs``: k for label scoring (servers usually cap it at 20). ``backoff_base_s``/``backoff_cap_s``:
    the retry delay before attempt n is a uniform draw in ``[0, min(cap, base * 2**n)]``, and at least
    ``Retry-After``. (vLLM's ``logprob_token_ids`` extension is not sent: other servers reject unknown fields,
    and the label token ids are unknown without the server's tokenizer.)
    """

    def __init__(self, cfg: ModelConfig, top_logprobs: int = 20, backoff_base_s: float = 0.5, backoff_cap_s: float = 20.0):
        if cfg.backend != "openai":
            raise ValueError(f"OpenAIBackend got backend={cfg.backend!r}")
        self.cfg = cfg
        self.base_url = _base_url(cfg)
        self.top_logprobs = top_logprobs
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="dfer-openai")
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _post(self, payload: dict) -> dict:
        import requests

        url = self.base_url + "/chat/completions"
        last_error = ""
        for attempt in range(self.cfg.max_retries + 1):
            wait = None
            try:
                resp = self._session().post(url, json=payload, headers=_headers(self.cfg),
                                            timeout=(min(10.0, self.cfg.timeout_s), self.cfg.timeout_s))
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                connection_failed = True
                refused = isinstance(exc, requests.ConnectionError)  # not answering at all (a ReadTimeout: a slow answer)
            else:
                connection_failed = False
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError as exc:
                        raise BackendRequestError(f"POST {url}: the answer is not JSON: {resp.text[:300]}") from exc
                last_error = f"HTTP {resp.status_code}: {resp.text[:500]}"
                if resp.status_code not in RETRY_STATUS:
                    raise BackendRequestError(f"POST {url} for model {self.cfg.model!r} failed with {last_error}")
                wait = _retry_after_s(resp.headers.get("Retry-After"))
            if attempt == self.cfg.max_retries:
                break
            delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))
            if wait is not None:
                delay = max(delay, min(wait, MAX_RETRY_AFTER_S))
            log.info("POST %s failed (%s); retry %d/%d in %.2fs", url, last_error, attempt + 1, self.cfg.max_retries, delay)
            time.sleep(delay)
        if connection_failed and refused:  # the server is gone: every later request would fail alike
            raise ServerDownError(
                f"stopped: the model server at {self.cfg.server_url} (model {self.cfg.model!r}) cannot be reached after "
                f"{self.cfg.max_retries + 1} attempts ({last_error}). Start it again (e.g. `vllm serve {self.cfg.model}`) "
                "or point the stage's model.server_url at a running one, then run the same command again: the clips "
                "finished so far stay in the cache")
        if connection_failed:
            raise ModelLoadError(f"The model server at {self.cfg.server_url} cannot be reached after "
                                 f"{self.cfg.max_retries + 1} attempts ({last_error})")
        raise BackendRequestError(f"POST {url} for model {self.cfg.model!r} still failing after {self.cfg.max_retries + 1} "
                                  f"attempts: {last_error}")

    def _map(self, fn, items: list) -> list:
        if self._closed:
            raise RuntimeError("backend is closed")
        return list(self._pool.map(fn, items))

    def _payload(self, prompt: Prompt, **extra) -> dict:
        return {"model": self.cfg.model, "messages": prompt_to_messages(prompt, self.cfg.image_max_side), "temperature": 0,
                "n": 1, "stream": False, **extra}

    # ------------------------------------------------------------------ public API
    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        limit = max_new_tokens or self.cfg.max_new_tokens

        def one(p: Prompt) -> str:
            data = self._post(self._payload(p, max_tokens=limit))
            try:
                return (data["choices"][0]["message"].get("content") or "").strip()
            except (KeyError, IndexError, TypeError) as exc:
                raise BackendRequestError(f"{self.base_url}: malformed chat completion: {str(data)[:300]}") from exc

        return self._map(one, prompts)

    def score_labels(self, prompts: list[Prompt], labels: list[str]) -> list[dict[str, LabelScore]]:
        if not labels:
            raise ValueError("score_labels needs at least one label")

        def one(p: Prompt) -> dict[str, LabelScore]:
            data = self._post(self._payload(p, max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs))
            return match_top_tokens(self._top_logprobs(data), labels)

        return self._map(one, prompts)

    def _top_logprobs(self, data: dict) -> list[tuple[str, float]]:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendRequestError(f"{self.base_url}: malformed chat completion: {str(data)[:300]}") from exc
        lp = choice.get("logprobs")
        entries = None
        if isinstance(lp, dict):
            content = lp.get("content")
            if content:
                entries = content[0].get("top_logprobs")
                if entries is not None:
                    entries = [(e["token"], float(e["logprob"])) for e in entries if e.get("logprob") is not None]
            elif lp.get("top_logprobs"):  # legacy completions layout: [{token: logprob}, ...]
                entries = [(t, float(v)) for t, v in lp["top_logprobs"][0].items()]
        if not entries:
            raise LabelScoringUnsupportedError(
                f"The server at {self.cfg.server_url} returned no logprobs for model {self.cfg.model!r}, so it cannot "
                "score labels (it must support `logprobs=true, top_logprobs` on /chat/completions). Use a server "
                "that does, such as vLLM or SGLang, or the transformers backend."
            )
        return entries

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        data = self._post(self._payload(prompt, max_tokens=1))
        n = (data.get("usage") or {}).get("prompt_tokens")
        if n is None:
            raise BackendRequestError(f"The server at {self.cfg.server_url} does not report usage.prompt_tokens")
        return int(n)

    @classmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        check_server_available(cfg)

    @classmethod
    def check_labels(cls, cfg: ModelConfig, labels: list[str]) -> None:
        check_label_first_tokens(cfg, labels)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)


__all__ = ["OpenAIBackend", "check_label_first_tokens", "check_server_available", "image_to_data_url", "match_top_tokens",
           "normalise_token", "prompt_to_messages"]
