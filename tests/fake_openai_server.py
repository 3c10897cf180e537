"""A small, real OpenAI-compatible HTTP server for tests, backed by a local transformers model.

``FakeOpenAIServer(backend)`` listens on ``127.0.0.1`` on an ephemeral port (stdlib ``ThreadingHTTPServer``) and
answers:

* ``GET /v1/models``: ``{"object": "list", "data": [{"id": model_name, ...}]}``;
* ``POST /v1/chat/completions``: decodes the messages (text parts and base64 ``data:`` image URLs, in order)
  into a :class:`pipeline.backends.Prompt` and runs the tiny model through the transformers backend.
  With ``logprobs=true`` it returns the first answer position's ``top_logprobs`` (the ``top_logprobs`` tokens
  with the highest log-probability under the model, each token's text decoded on its own) as vLLM does; the
  content is the greedy answer; ``usage`` has ``prompt_tokens`` and ``completion_tokens``;
* ``POST /tokenize`` (at the root, as vLLM and SGLang serve it): ``{"model", "prompt", "add_special_tokens"}`` ->
  ``{"tokens": [ids], "count", "max_model_len"}`` with the tiny model's tokenizer (``tokenize=False``: 404, like
  a server without the endpoint); chat ``messages`` instead of a prompt: 400 (it renders no chat template).
  ``tokenize_requests`` counts them.

Knobs for failure tests: ``fail_first=N`` makes the first N chat requests fail with ``fail_status`` (and a
``Retry-After`` header if ``retry_after`` is set); ``logprobs=False`` answers without logprobs (like a server
that does not support them); ``max_top_logprobs`` caps k like vLLM's ``--max-logprobs``; ``die_after=N`` answers N
chat requests, then dies like a killed server: it stops listening (new connections are refused) and drops every open
connection without an answer.

The server runs in a daemon thread, stops on ``stop()`` / leaving the ``with`` block, and stops by itself after
``lifetime_s`` seconds in any case. ``requests_seen`` records the JSON bodies of chat requests.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline.backends import Prompt


def _decode_image(url: str):
    from PIL import Image

    if not url.startswith("data:"):
        raise ValueError("only data: image URLs are supported by the fake server")
    b64 = url.split(",", 1)[1]
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def messages_to_prompt(messages: list[dict]) -> Prompt:
    system = None
    parts: list = []
    for msg in messages:
        content = msg.get("content")
        if msg.get("role") == "system":
            system = content if isinstance(content, str) else "".join(c.get("text", "") for c in content)
            continue
        if isinstance(content, str):
            parts.append(content)
            continue
        for c in content:
            if c.get("type") == "text":
                parts.append(c["text"])
            elif c.get("type") == "image_url":
                url = c["image_url"]["url"] if isinstance(c["image_url"], dict) else c["image_url"]
                parts.append(_decode_image(url))
            else:
                raise ValueError(f"unsupported content part {c.get('type')!r}")
    return Prompt(parts=parts, system=system)



def next_token_logprobs(backend, prompts):
    """fp32 log-softmax over the vocabulary at the answer position of a transformers backend, shape
    ``(len(prompts), vocab)``, on cpu: what a server's ``top_logprobs`` are drawn from."""
    import torch

    with torch.inference_mode():
        first, _cache, _inputs, _next = backend._prefill([backend.render_prompt(p) for p in prompts], use_cache=False)
    return first.cpu()


class FakeOpenAIServer:
    def __init__(
        self,
        backend,
        model_name: str = "tiny-vlm",
        fail_first: int = 0,
        fail_status: int = 503,
        retry_after: str | None = None,
        logprobs: bool = True,
        max_top_logprobs: int | None = None,
        tokenize: bool = True,
        lifetime_s: float = 120.0,
        die_after: int | None = None,
    ):
        self.backend = backend
        self.model_name = model_name
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.logprobs = logprobs
        self.max_top_logprobs = max_top_logprobs
        self.tokenize = tokenize
        self.tokenize_requests = 0
        self.lifetime_s = lifetime_s
        self.requests_seen: list[dict] = []
        self.failures_sent = 0
        self.die_after = die_after
        self.answered = 0
        self.dead = False
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model", "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if server.dead:  # a killed server answers nothing on a connection it had open
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if self.path.rstrip("/") == "/tokenize" and server.tokenize:
                    body = json.loads(raw)
                    with server._lock:
                        server.tokenize_requests += 1
                    if "prompt" not in body:  # chat messages: this server renders no chat template (as SGLang's)
                        self._send(400, {"error": {"message": "/tokenize takes a prompt"}})
                        return
                    ids = server.backend.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
                    self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": 4096})
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                with server._lock:
                    server.requests_seen.append(body)
                    fail = server.failures_sent < server.fail_first
                    if fail:
                        server.failures_sent += 1
                if fail:
                    headers = {"Retry-After": server.retry_after} if server.retry_after is not None else {}
                    self._send(server.fail_status, {"error": {"message": "injected failure"}}, headers)
                    return
                if body.get("model") != server.model_name:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                    return
                with server._lock:  # decided before answering: the client's next request already finds it dead
                    server.answered += 1
                    die = server.die_after is not None and server.answered >= server.die_after and not server.dead
                try:
                    answer = (200, server._complete(body))
                except Exception as exc:  # report, don't kill the server thread
                    answer = (400, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
                if die:
                    server.dead = True
                    threading.Thread(target=server.stop, daemon=True).start()
                self._send(*answer)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ completion
    def _complete(self, body: dict) -> dict:
        import torch

        prompt = messages_to_prompt(body["messages"])
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        tok = self.backend.tokenizer
        choice: dict = {"index": 0, "finish_reason": "length", "logprobs": None}
        if body.get("logprobs") and self.logprobs:
            lp = next_token_logprobs(self.backend, [prompt])[0]
            k = int(body.get("top_logprobs") or 0)
            if self.max_top_logprobs is not None:
                k = min(k, self.max_top_logprobs)
            k = max(1, min(k, lp.shape[0]))
            vals, ids = torch.topk(lp, k)
            top = [
                {"token": tok.decode([int(i)]), "logprob": float(v), "bytes": list(tok.decode([int(i)]).encode())}
                for v, i in zip(vals, ids)
            ]
            first = top[0]
            choice["logprobs"] = {"content": [{"token": first["token"], "logprob": first["logprob"], "top_logprobs": top}]}
        if max_tokens == 1 and choice["logprobs"] is not None:
            text = choice["logprobs"]["content"][0]["token"]
        else:
            text = self.backend.generate([prompt], max_new_tokens=max_tokens)[0]
        choice["message"] = {"role": "assistant", "content": text}
        n_prompt = self.backend.count_prompt_tokens(prompt)
        n_out = len(tok(text, add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-fake-{len(self.requests_seen)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
        }
