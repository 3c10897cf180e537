"""What issue 22's server scoring costs, measured side by side on the tests' real servers (tests/servers.py).

The tiny Qwen2-VL built for vLLM (tests/tiny_models.py, ``qwen2vl-vllm``) served by vLLM's CPU build (its venv from
``bash .ci/vllm-venv.sh``) and by ``transformers serve``. Measured in one run, with dfer's own ``openai`` backend:

* the preflight (``OpenAIBackend.check_scoring``: the labels tokenized with ``/tokenize``, then one chat completion
  with two 224x224 images): seconds on vLLM, and seconds until ``transformers serve`` is refused (it ignores
  ``logprobs``);
* scoring 16 prompts of 4 images (112x112) each, the DFEW labels: with vLLM's ``logprob_token_ids`` (every label
  exact) and from the top 20 tokens only (``label_token_ids=False``, as on servers without that extension): seconds
  per prompt (median of 4 passes, the two ways alternating, new images every pass, after 4 warm-up requests), and
  how many prompts each way scored ``exact``, ``partial`` and ``none``.

Run: ``python benchmarks/server_scoring.py`` (about 3 minutes on 2 cores, most of it vLLM's start-up). Absolute
times on a shared machine mean little; read the ratios.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.backends import ModelConfig, Prompt  # noqa: E402
from pipeline.backends.openai_http import OpenAIBackend  # noqa: E402
from pipeline.backends.openai_scoring import label_tokens  # noqa: E402
from pipeline.core.errors import LabelScoringUnsupportedError  # noqa: E402
from pipeline.eval.labels import load_label_set  # noqa: E402
from pipeline.eval.ranking import decide  # noqa: E402
from tests import servers  # noqa: E402
from tests.tiny_models import tiny_model_dir  # noqa: E402

LABELS = load_label_set("dfew").names
QUESTION = "Which emotion does this person express? Choose one of: " + ", ".join(LABELS) + ". Answer with one word."


def prompts(seed: int, n: int, k: int = 4, side: int = 112) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    return [Prompt([*(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(k)),
                    QUESTION]) for _ in range(n)]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="dfer-bench-scoring-"))
    model = tiny_model_dir("qwen2vl-vllm", root / "models")
    vllm = servers.start_vllm(model, root / "vllm.log")
    tserve = servers.start_transformers_serve(model, root / "serve.log")
    try:
        probe = prompts(0, 1, k=2, side=224)[0]
        cfg = ModelConfig(model=model, backend="openai", server_url=vllm.v1, max_concurrency=1)
        warm = OpenAIBackend(cfg)
        warm.score_labels(prompts(999, 4), LABELS)  # the server's first requests are slower: not measured
        warm.close()
        t_tok, _ = timed(lambda: label_tokens(cfg, LABELS))
        t_pre, rule = timed(lambda: OpenAIBackend.check_scoring(cfg, LABELS, probe))
        bad = ModelConfig(model=model, backend="openai", server_url=tserve.v1)
        t0 = time.perf_counter()
        try:
            OpenAIBackend.check_scoring(bad, LABELS, probe)
            refused = "NOT refused"
        except LabelScoringUnsupportedError:
            refused = "refused"
        t_bad = time.perf_counter() - t0
        print(f"preflight on vLLM: {t_pre:.2f} s, of which {t_tok:.2f} s tokenizing the labels "
              f"({rule.split(';')[0]})")
        print(f"preflight on transformers serve: {refused} after {t_bad:.2f} s")

        times: dict[str, list[float]] = {"logprob_token_ids": [], "top 20 only": []}
        kinds: dict[str, dict[str, int]] = {name: {} for name in times}
        modes = [("logprob_token_ids", True), ("top 20 only", False)]
        for rep in range(4):  # the two ways alternate, so neither always goes first
            for name, by_id in (modes if rep % 2 == 0 else modes[::-1]):
                batch = prompts(100 * rep + (0 if by_id else 50), 16)
                backend = OpenAIBackend(cfg, label_token_ids=by_id)
                backend.scoring_plan(LABELS, probe)  # settled first (on another prompt), as a run does
                try:
                    t, scores = timed(lambda: backend.score_labels(batch, LABELS))
                finally:
                    backend.close()
                times[name].append(t / len(batch))
                for row in scores:
                    kind = decide({"scores": {lab: s.to_dict() for lab, s in row.items()}}, LABELS).scored
                    kinds[name][kind] = kinds[name].get(kind, 0) + 1
        base = statistics.median(times["top 20 only"])
        for name, ts in times.items():
            sec = statistics.median(ts)
            print(f"scoring, {name}: {sec:.3f} s per prompt ({sec / base:.2f}x the top-20 request); "
                  f"{sum(kinds[name].values())} prompts: {kinds[name]}")
    finally:
        vllm.stop()
        tserve.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
