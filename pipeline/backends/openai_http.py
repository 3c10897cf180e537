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
    ``temperature=0``, ``max_completion_tokens=max_new_tokens`` (OpenAI's current name for the limit, which vLLM
    and ``transformers serve`` read); returns ``choices[0].message.content``.

Label scoring
    One request per prompt, asking for the answer's first token's log-probabilities; which tokens are each
    label's (by token id, from the server's tokenizer), what is asked for and how the answer is read:
    :mod:`pipeline.backends.openai_scoring`. The first scoring call settles the plan with that prompt
    (:meth:`OpenAIBackend.scoring_plan`); :meth:`OpenAIBackend.check_scoring` does the same before any clip, with a
    stand-in prompt of the classify stage (images included), so a server that ignores ``logprobs`` stops the run
    there (exit 2, naming the server, the model and what is missing), not at every clip. (The answer that settled
    the plan is the first prompt's score: no request is sent twice.)

Prompt length
    ``count_prompt_tokens`` sends ``max_completion_tokens=1`` and reads ``usage.prompt_tokens``.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

from pipeline.backends.base import Backend, LabelScore, ModelConfig, Prompt, Video, prepare_image
from pipeline.backends.openai_scoring import ScoringPlan, headers, label_tokens, settle_plan
from pipeline.core.errors import (BackendRequestError, LabelScoringUnsupportedError, ModelLoadError, ModelUnavailableError,
                                  ServerDownError, VideoInputUnsupportedError)

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0
TOP_LOGPROBS = 20  # the usual server cap (vLLM's --max-logprobs default, OpenAI's and Ollama's limit)


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


def check_server_available(cfg: ModelConfig, timeout_s: float = 10.0) -> None:
    """``GET {server_url}/models``: raises :class:`ModelLoadError` if the server is down or answers with an error,
    :class:`ModelUnavailableError` if it does not serve ``cfg.model``."""
    import requests

    url = _base_url(cfg) + "/models"
    try:
        resp = requests.get(url, headers=headers(cfg), timeout=min(timeout_s, cfg.timeout_s))
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


class OpenAIBackend(Backend):
    """See the module docstring.

    ``top_logprobs``: k for label scoring (servers usually cap it at 20). ``backoff_base_s``/``backoff_cap_s``:
    the retry delay before attempt n is a uniform draw in ``[0, min(cap, base * 2**n)]``, and at least
    ``Retry-After``. ``label_token_ids=False``: never ask for the label tokens by id (vLLM's ``logprob_token_ids``),
    so labels are read from the top-k only, as on servers without that extension.
    """

    def __init__(self, cfg: ModelConfig, top_logprobs: int = TOP_LOGPROBS, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 20.0, label_token_ids: bool = True):
        if cfg.backend != "openai":
            raise ValueError(f"OpenAIBackend got backend={cfg.backend!r}")
        self.cfg = cfg
        self.base_url = _base_url(cfg)
        self.top_logprobs = top_logprobs
        self.label_token_ids = label_token_ids
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="dfer-openai")
        self._plans: dict[tuple[str, ...], ScoringPlan] = {}
        self._settled: dict[tuple[str, ...], tuple[Prompt, dict]] = {}
        self._plan_lock = threading.Lock()
        self._closed = False

    @property
    def where(self) -> str:
        """The server and model, for messages."""
        return f"the server at {self.cfg.server_url} (model {self.cfg.model!r})"

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
                resp = self._session().post(url, json=payload, headers=headers(self.cfg),
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

    def _text(self, data: dict) -> str:
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendRequestError(f"{self.where}: malformed chat completion: {str(data)[:300]}") from exc
        if content is not None and not isinstance(content, str):
            raise BackendRequestError(f"{self.where}: the answer's content is not text: {str(content)[:300]}")
        return (content or "").strip()

    # ------------------------------------------------------------------ public API
    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        limit = max_new_tokens or self.cfg.max_new_tokens
        return self._map(lambda p: self._text(self._post(self._payload(p, max_completion_tokens=limit))), prompts)

    def scoring_plan(self, labels: list[str], prompt: Prompt) -> ScoringPlan:
        """How this server is asked for these labels' scores (:mod:`pipeline.backends.openai_scoring`), settled once
        with one request for ``prompt``. Raises :class:`LabelScoringUnsupportedError` naming the server, the model
        and what is missing when the server answers without log-probabilities."""
        key = tuple(labels)
        with self._plan_lock:
            if key not in self._plans:
                self._plans[key], answer, sent = self._settle(labels, prompt)
                if sent == self._plans[key].request():  # the plan asks as the preflight request asked
                    self._settled[key] = (prompt, answer)
            return self._plans[key]

    def _settle(self, labels: list[str], prompt: Prompt) -> tuple[ScoringPlan, dict, dict]:
        tokens = label_tokens(self.cfg, labels)
        tries = [True, False] if tokens.tokenized else [False]
        for extensions in tries:
            plan = ScoringPlan(tokens, "top-k token ids", self.top_logprobs, extensions, self.label_token_ids)
            try:
                answer = self._post(self._payload(prompt, **plan.request()))
            except BackendRequestError as exc:
                if extensions and any(f"HTTP {code}" in str(exc) for code in (400, 422)):
                    log.info("%s rejects vLLM's logprob_token_ids/return_tokens_as_token_ids; asking without", self.where)
                    continue
                raise
            try:
                return settle_plan(plan, answer), answer, plan.request()
            except LabelScoringUnsupportedError:
                raise LabelScoringUnsupportedError(
                    f"{self.where} answered a chat completion with an image and `logprobs: true, top_logprobs: "
                    f"{self.top_logprobs}` without any log-probabilities: it ignores `logprobs`/`top_logprobs` "
                    "(transformers serve does), so classify cannot score labels there. Use a server that returns "
                    "them (vLLM, SGLang), or let the model answer in words (--set classify.answer=generate), or the "
                    "transformers backend.") from None
        raise AssertionError("unreachable")

    def score_labels(self, prompts: list[Prompt], labels: list[str]) -> list[dict[str, LabelScore]]:
        if not labels:
            raise ValueError("score_labels needs at least one label")
        if not prompts:
            return []
        plan = self.scoring_plan(labels, prompts[0])
        settled = self._settled.pop(tuple(labels), None)  # the answer that settled the plan, if it was for prompts[0]

        def one(p: Prompt) -> dict[str, LabelScore]:
            if settled is not None and p is settled[0]:
                return plan.read(settled[1], self.where)
            return plan.read(self._post(self._payload(p, **plan.request())), self.where)

        return self._map(one, prompts)

    def scoring_note(self, labels: list[str]) -> str | None:
        plan = self._plans.get(tuple(labels))
        return None if plan is None else plan.description

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        data = self._post(self._payload(prompt, max_completion_tokens=1))
        n = (data.get("usage") or {}).get("prompt_tokens")
        if n is None:
            raise BackendRequestError(f"The server at {self.cfg.server_url} does not report usage.prompt_tokens")
        return int(n)

    @classmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        check_server_available(cfg)

    @classmethod
    def check_labels(cls, cfg: ModelConfig, labels: list[str]) -> None:
        label_tokens(cfg, labels)

    @classmethod
    def check_scoring(cls, cfg: ModelConfig, labels: list[str], prompt: Prompt) -> str:
        backend = cls(cfg)
        try:
            return backend.scoring_plan(labels, prompt).description
        finally:
            backend.close()

    @classmethod
    def check_generation(cls, cfg: ModelConfig, prompt: Prompt, max_new_tokens: int) -> None:
        backend = cls(cfg)
        try:
            backend._text(backend._post(backend._payload(prompt, max_completion_tokens=max_new_tokens)))
        finally:
            backend.close()

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)


__all__ = ["OpenAIBackend", "check_server_available", "image_to_data_url", "prompt_to_messages"]
