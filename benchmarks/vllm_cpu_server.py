"""What the real vLLM CPU server of the tests costs (tests/servers.py), beside transformers on the same checkpoint.

The tiny Qwen2-VL built for vLLM (tests/tiny_models.py, ``qwen2vl-vllm``; 16x16 pixels at most, 4 image tokens an
image) is served by vLLM's CPU build (its venv from ``bash .ci/vllm-venv.sh``) with the tests' command, and by
``transformers serve``. Measured in one run:

* start-up: seconds from the command to ``GET /v1/models`` answering 200, for each server;
* one label-scoring request as dfer's ``openai`` backend sends it (``max_completion_tokens=1``, ``logprobs``,
  ``top_logprobs=20``, JPEG data URLs of 112x112 images) with 1, 8 and 32 images: the median seconds of vLLM with
  new images every request (no prefix-cache hit), vLLM repeating one request (a hit), and the same prompt's forward
  pass by transformers in this process (``AutoModelForImageTextToText``, float32, one torch thread);
* requests in flight: 32 requests of 8 images each, sent 1 at a time and 8 at a time (threads), in prompts/s;
* memory: the proportional set size (PSS, shared pages split between processes) of each server's process group
  once it has answered everything above.

Run: ``python benchmarks/vllm_cpu_server.py`` (about 2 minutes on 2 cores). Absolute times on a shared machine mean
little; read the ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.backends.openai_http import image_to_data_url  # noqa: E402
from tests import servers  # noqa: E402
from tests.tiny_models import tiny_model_dir  # noqa: E402

QUESTION = "Which emotion is shown? Answer with one word from: happy, sad, neutral, angry, surprise, disgust, fear."


def images(seed: int, n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]


def body(model: str, imgs: list) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_to_data_url(im)}} for im in imgs]
    return {"model": model, "messages": [{"role": "user", "content": [*content, {"type": "text", "text": QUESTION}]}],
            "max_completion_tokens": 1, "logprobs": True, "top_logprobs": 20, "temperature": 0}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="requests per median (default 7)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not (servers.vllm_venv() / servers.VLLM_VENV_STAMP).exists():
        print(f"no vLLM venv at {servers.vllm_venv()}: build it with bash .ci/vllm-venv.sh", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="dfer-vllm-bench-"))
    model = tiny_model_dir("qwen2vl-vllm", work / "models")
    vllm = servers.start_vllm(model, work / "vllm.log")
    tfs = None
    try:
        tfs = servers.start_transformers_serve(model, work / "serve.log")
        print(f"start-up: vLLM {vllm.startup_s:.1f} s, transformers serve {tfs.startup_s:.1f} s "
              f"({vllm.startup_s / tfs.startup_s:.1f}x)")
        processor = AutoProcessor.from_pretrained(model)
        local = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()

        def post(server, b):
            status, answer = server.post("/v1/chat/completions", b)
            assert status == 200, answer

        def forward(imgs):
            msgs = [{"role": "user", "content": [*({"type": "image", "image": im} for im in imgs),
                                                 {"type": "text", "text": QUESTION}]}]
            inputs = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                   return_tensors="pt")
            with torch.no_grad():
                torch.log_softmax(local(**inputs).logits[0, -1].float(), -1).topk(20)

        seed = 100
        print(f"\none scoring request, median of {args.repeats} (seconds; vLLM over HTTP, transformers in process)")
        print(f"{'images':>6} {'vLLM new':>9} {'vLLM hit':>9} {'transformers':>13} {'serve (no lp)':>14} "
              f"{'vLLM/transf.':>13}")
        for n in (1, 8, 32):
            post(vllm, body(model, images(seed, n)))  # first request of this size: warm-up
            new, hit, mine, served = [], [], [], []
            fixed = body(model, images(seed, n))
            for _ in range(args.repeats):
                seed += 1
                imgs = images(seed, n)
                b = body(model, imgs)
                new.append(timed(lambda: post(vllm, b)))
                hit.append(timed(lambda: post(vllm, fixed)))
                mine.append(timed(lambda: forward(imgs)))
                served.append(timed(lambda: post(tfs, b)))
            m_new, m_hit, m_mine, m_srv = (statistics.median(x) for x in (new, hit, mine, served))
            print(f"{n:>6} {m_new:>9.3f} {m_hit:>9.3f} {m_mine:>13.3f} {m_srv:>14.3f} {m_new / m_mine:>12.2f}x")

        print("\n32 requests of 8 images (prompts/s)")
        bodies = [body(model, images(1000 + i, 8)) for i in range(64)]
        rates = {}
        for k, chunk in ((1, bodies[:32]), (8, bodies[32:])):
            with ThreadPoolExecutor(k) as pool:
                t = timed(lambda: list(pool.map(lambda b: post(vllm, b), chunk)))
            rates[k] = len(chunk) / t
            print(f"  {k} in flight: {rates[k]:.1f} prompts/s")
        print(f"  8 in flight / 1 in flight: {rates[8] / rates[1]:.2f}x")

        print(f"\nmemory (PSS): vLLM {pss_mb(vllm.group_pids()):.0f} MB in {len(vllm.group_pids())} processes, "
              f"transformers serve {pss_mb(tfs.group_pids()):.0f} MB")
    finally:
        vllm.stop()
        if tfs:
            tfs.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
