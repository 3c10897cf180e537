"""GPU throughput of the whole pipeline with a 3B-class Qwen2.5-VL: clips/s per stage at the settings that matter on
a GPU server (worker processes for faces and keyframes, attention kernels, model batch sizes), the time in the
transformers backend's phases, peak GPU and host memory, and the projected wall time for DFEW's 16,372 clips. One
command, results written to a JSON file as they come:

    python benchmarks/gpu_throughput.py --out gpu_throughput.json          # on a CUDA GPU: about 8-10 min on an H100
    python benchmarks/gpu_throughput.py --allow-cpu --tiny --clips 2 --out /tmp/smoke.json   # smoke run without a GPU

What runs (every stage through the real runner, ``pipeline.engine.runner.Runner``, on one cache):

1. **faces** with MTCNN on the GPU (``faces.device=cuda``) on ``--clips`` synthetic clips (``tests/media.py``, the
   astronaut face with a 0.4 s expression, ``--clip-size`` at 25 fps, ``--seconds`` long), once per
   ``--faces-workers`` value (default ``1,auto``; ``run.workers``): ``1`` in this process, so that torch reports its
   peak GPU memory; ``auto`` (or a number) in worker processes, each with its own CUDA context: their GPU memory
   per process is sampled from ``nvidia-smi`` every 0.5 s, and the host memory of this process and its workers from
   ``/proc``; clips/s each, and how many workers ``auto`` started and why;
2. **keyframes** on CPU workers, once per ``--keyframes-workers`` value (default ``auto``);
3. **context** (captions of the in-between frames + one condensing generation per gap) and **classify**
   (keyframes + summaries, the 7 DFEW labels scored with KV reuse) with a *randomly initialised*
   ``Qwen2_5_VLForConditionalGeneration`` of Qwen2.5-VL-3B-Instruct's dimensions, for each attention implementation
   of ``--attn`` (``*.model.attn_implementation``; default ``sdpa``, and ``flash_attention_2`` where the flash-attn
   package is installed) and each model batch size (``--model-batch``, then the ``--sweep`` values;
   ``*.model.batch_size``, with ``run.batch_size`` at least as large so that the model batch is what a forward pass
   gets), until ``--budget-s`` seconds have passed since the start (the rest is skipped and said so). Per model
   stage: the model load (timed apart), clips/s of its batches (CUDA synchronised), peak GPU memory
   (``torch.cuda.max_memory_allocated``), the attention kernels the model ran with, and the time in the backend's
   phases (exclusive): the processor (images and text to tensors, CPU), the prompt prefill, the label
   continuations over the repeated KV cache, ``generate``, token counting, and the rest (prompt building: crops
   from the cache, templates);
4. the **projection** for DFEW (16,372 clips, ``--dataset-clips``): per stage, clips / the best measured clips/s
   (over worker counts, attention kernels and batch sizes), summed (stages run one after another over all clips),
   for one GPU with its host's CPUs, against the target of one hour.

No weights are downloaded. The model's dimensions are typed in below from Qwen/Qwen2.5-VL-3B-Instruct's published
``config.json``: text 2048 hidden, 11008 MLP, 36 layers, 16 query / 2 key-value heads, vocabulary 151936, M-RoPE
sections [16, 24, 24], tied embeddings; vision tower 32 blocks of 1280 hidden (3420 MLP, 16 heads), patch 14,
temporal patch 2, spatial merge 2, window 112, full attention in blocks 7/15/23/31, output 2048. The processor is
the real ``Qwen2_5_VLProcessor`` with the published image preprocessing (patch 14, merge 2, 3136..12845056
pixels), so a 224x224 face crop costs 64 image tokens as with the real model; its tokenizer is a small BPE trained
on the spot (``tests/tiny_models.py``): only token ids matter to the arithmetic, and the random model is restricted
to those ids (the embedding rows of the other ids are zeroed, so greedy decoding never picks them; the LM head
still multiplies over all 151936 rows). Generation has no end-of-sequence token, so every caption and summary is
exactly ``--new-tokens`` tokens long (checked). The checkpoint is saved to ``--workdir`` (about 7.5 GB in bf16)
and loaded back by the pipeline exactly as a user's checkpoint is.

Runs in bf16 on a CUDA GPU. Without one it stops with a message, unless ``--allow-cpu --tiny`` asks for a smoke run
(float32, a much smaller model of the same architecture, MTCNN on the CPU; its numbers mean nothing).
Needs the dev extras (scikit-image for the clips).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers_scaling import TreeMemory  # noqa: E402

# Qwen/Qwen2.5-VL-3B-Instruct, config.json as published on the Hugging Face hub.
QWEN25_VL_3B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
    sliding_window=32768,
    max_window_layers=70,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
QWEN25_VL_3B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_channels=3,
    out_hidden_size=2048,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)
# preprocessor_config.json of the same model
QWEN25_VL_PIXELS = dict(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=3136, max_pixels=12845056)

# --tiny: same architecture and vocabulary, small widths and depths (CPU smoke runs only)
TINY_TEXT = {**QWEN25_VL_3B_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}}
TINY_VISION = {**QWEN25_VL_3B_VISION, "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
               "out_hidden_size": 64, "fullatt_block_indexes": [1]}


def build_checkpoint(out: Path, tiny: bool, device: str, dtype) -> dict:
    """Random Qwen2.5-VL (3B dims, or tiny) + real processor with a small trained tokenizer, saved to ``out``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from tests.tiny_models import QWEN2VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, train_tokenizer, wrap_tokenizer

    torch.manual_seed(0)
    tokenizer = wrap_tokenizer(train_tokenizer(QWEN_SPECIAL_TOKENS), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.model_max_length = 128000
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**QWEN25_VL_PIXELS),
        video_processor=Qwen2VLVideoProcessor(**QWEN25_VL_PIXELS),
        tokenizer=tokenizer,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    text = dict(TINY_TEXT if tiny else QWEN25_VL_3B_TEXT)
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=None, pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(TINY_VISION if tiny else QWEN25_VL_3B_VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # only the tokenizer's ids can ever be generated (tied: the LM head is this matrix)
        model.get_input_embeddings().weight[len(tokenizer) :] = 0
    gc = model.generation_config
    gc.eos_token_id = None  # fixed-length generation
    gc.pad_token_id = ids["<|endoftext|>"]
    gc.bos_token_id = ids["<|endoftext|>"]
    gc.do_sample = False
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"params": n_params, "tokenizer_ids": len(tokenizer)}


DFEW_CLIPS = 16372


TARGET_HOURS = 1.0  # issue 25: the whole pass, faces to classify, within an hour on one H100/H200-class GPU
PHASES = {"_encode": "processor", "_prefill": "prefill", "_continue": "label continuations",
          "_score_full": "full-sequence scoring", "count_prompt_tokens": "token counting"}


def _sync() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


class GpuProcesses(threading.Thread):
    """GPU memory of every process on the GPUs, from ``nvidia-smi`` every 0.5 s: the largest one of another process
    than this one (a worker's), and the largest sum; ``available`` is False where nvidia-smi is missing."""

    def __init__(self):
        super().__init__(daemon=True)
        self.available = shutil.which("nvidia-smi") is not None
        self.stop, self.worker_peak_mib, self.total_peak_mib, self.processes = threading.Event(), 0, 0, set()

    def run(self) -> None:
        while self.available and not self.stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout
            rows = [[int(v) for v in line.split(",")] for line in out.splitlines() if line.strip()]
            others = [mib for pid, mib in rows if pid != os.getpid()]
            self.processes |= {pid for pid, _ in rows if pid != os.getpid()}
            self.worker_peak_mib = max([self.worker_peak_mib, *others])
            self.total_peak_mib = max(self.total_peak_mib, sum(mib for _, mib in rows))
            self.stop.wait(0.5)

    def result(self) -> dict:
        self.stop.set()
        self.join()
        if not self.available:
            return {"gpu_per_worker_gib": None, "gpu_all_processes_gib": None, "note": "nvidia-smi not found"}
        return {"gpu_per_worker_gib": self.worker_peak_mib / 1024, "gpu_all_processes_gib": self.total_peak_mib / 1024,
                "gpu_worker_processes": len(self.processes)}


def instrument(backend, times: dict) -> None:
    """Time the transformers backend's phases (:data:`PHASES`, ``generate``) into ``times``, exclusive of the timed
    phases they call (CUDA synchronised)."""
    stack: list[str] = []

    def timed(name, f):
        def call(*a, **kw):
            stack.append(name)
            t0 = _sync()
            try:
                return f(*a, **kw)
            finally:
                dt = _sync() - t0
                stack.pop()
                times[name] += dt
                if stack:
                    times[stack[-1]] -= dt
        return call

    for attr, name in PHASES.items():
        if hasattr(backend, attr):
            setattr(backend, attr, timed(name, getattr(backend, attr)))
    model = getattr(backend, "model", None)
    if model is not None:
        model.generate = timed("generate", model.generate)


def timed_executor(workers):
    """A :class:`pipeline.engine.executor.LocalExecutor` (per-clip stages on the local process pool, ``workers`` as
    ``run.workers``) whose model stages run in this process with the model load and the batches timed apart (CUDA
    synchronised), every generation's length recorded, the backend's phases timed and each model stage's peak GPU
    memory read."""
    from pipeline.engine.batching import process_batches
    from pipeline.engine.executor import LocalExecutor

    class TimedExecutor(LocalExecutor):
        def __init__(self, n):
            super().__init__(n)
            self.stats: dict[str, dict] = {}

        def map_batched(self, stage, cfg, todo, cache, batch_size):
            self.close()  # as LocalExecutor does: no idle workers during a model stage
            _peak_reset()
            t0 = _sync()
            resources = stage.open(cfg)
            t1 = _sync()
            lengths: list[int] = []
            times: dict[str, float] = defaultdict(float)
            model = getattr(resources, "model", None)
            if model is not None:
                inner = model.generate

                def generate(*a, **kw):
                    out = inner(*a, **kw)
                    lengths.extend([out.shape[1] - kw["input_ids"].shape[1]] * out.shape[0])
                    return out

                model.generate = generate
                instrument(resources, times)
            try:
                t2 = _sync()
                results = list(process_batches(stage, cfg, resources, todo, cache, batch_size))
                t3 = _sync()
            finally:
                attn = getattr(resources, "attn_implementation", None)
                stage.close(resources)
            compute = t3 - t2
            phases = {k: round(v, 3) for k, v in times.items()}
            phases["prompt building and the rest"] = round(compute - sum(times.values()), 3)
            self.stats[stage.name] = {
                "clips": len(todo), "load_s": t1 - t0, "compute_s": compute, "generations": len(lengths),
                "new_tokens": sum(lengths), "lengths": sorted(set(lengths)), "attn_implementation": attn,
                "failed": sum(1 for _, r in results if not r.ok), "peak_gib": _peak_gib(), "phases_s": phases,
            }
            yield from results

    return TimedExecutor(workers)


def _workers(text: str) -> list[int | str]:
    return [v if v == "auto" else int(v) for v in (x.strip() for x in text.split(",")) if v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_throughput.json", help="JSON file the results are written to")
    ap.add_argument("--clips", type=int, default=32, help="timed clips")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each synthetic clip (DFEW clips are 2-5 s)")
    ap.add_argument("--clip-size", default="640x360", help="frame size of the synthetic clips, WxH")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per caption and per gap summary (fixed)")
    ap.add_argument("--clip-batch", type=int, default=16, help="clips per model-stage call (run.batch_size; raised to "
                    "the model batch where that is larger)")
    ap.add_argument("--model-batch", type=int, default=8, help="prompts per forward pass (*.model.batch_size) of the main run")
    ap.add_argument("--sweep", default="16,32", help="more *.model.batch_size values for context + classify ('' for none)")
    ap.add_argument("--attn", default=None, help="*.model.attn_implementation values, comma separated (default: sdpa, and "
                    "flash_attention_2 where flash-attn is installed and a GPU is used)")
    ap.add_argument("--faces-workers", default="1,auto", help="run.workers values for faces (1: in this process)")
    ap.add_argument("--keyframes-workers", default="auto", help="run.workers values for keyframes")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no model-stage point after this many seconds")
    ap.add_argument("--image-size", type=int, default=224, help="face crop side sent to the model (64 tokens at 224)")
    ap.add_argument("--warmup", type=int, default=2, help="clips of an untimed warm-up run (all stages)")
    ap.add_argument("--dataset-clips", type=int, default=DFEW_CLIPS, help="clips of the projected dataset (DFEW: 16,372)")
    ap.add_argument("--workdir", default=None, help="where to save the random checkpoint (default: a temporary folder)")
    ap.add_argument("--tiny", action="store_true", help="a much smaller model of the same architecture (smoke runs)")
    ap.add_argument("--allow-cpu", action="store_true", help="with --tiny: run on CPU in float32 (numbers are meaningless)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    if torch.cuda.is_available():
        device, dtype, dtype_name = "cuda", torch.bfloat16, "bfloat16"
    elif args.allow_cpu and args.tiny:
        device, dtype, dtype_name = "cpu", torch.float32, "float32"
    else:
        print("gpu_throughput: no CUDA GPU is visible. This benchmark measures a 3B-class model in bf16 on a GPU; "
              "for a smoke run of the script on CPU pass --allow-cpu --tiny.", file=sys.stderr)
        return 2

    from pipeline.engine.config import load_config
    from pipeline.engine.inputs import discover
    from pipeline.engine.runner import Runner
    from pipeline.engine.workers import usable_cores
    from tests import media

    t_start = time.perf_counter()
    width, height = (int(v) for v in args.clip_size.lower().split("x"))
    batches = list(dict.fromkeys([args.model_batch] + [int(v) for v in args.sweep.split(",") if v.strip()]))
    flash = importlib.util.find_spec("flash_attn") is not None
    if args.attn:
        attns = [a.strip() for a in args.attn.split(",") if a.strip()]
    else:
        attns = ["sdpa"] + (["flash_attention_2"] if flash and device == "cuda" else [])
    result: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run)", "dtype": dtype_name,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if device == "cuda" else None,
        "cpu_cores": usable_cores(), "torch": torch.__version__, "transformers": transformers.__version__,
        "flash_attn_installed": flash, "args": vars(args), "faces": [], "keyframes": [], "models": [], "skipped": [],
    }
    if "flash_attention_2" not in attns:
        why = "not asked for (--attn)" if args.attn else "the flash-attn package is not installed" if not flash else "no GPU"
        result["skipped"].append(f"attn_implementation=flash_attention_2: {why}")
    own_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="dfer-gpu-bench-") if own_tmp else args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1), encoding="utf-8")

    try:
        t0 = time.perf_counter()
        built = build_checkpoint(work / "model", args.tiny, device, dtype)
        result["model"] = {"params": built["params"], "size": "tiny (smoke run)" if args.tiny else "Qwen2.5-VL-3B dimensions",
                           "build_and_save_s": round(time.perf_counter() - t0, 1)}
        print(f"model: random Qwen2.5-VL, {result['model']['size']}, {built['params'] / 1e9:.2f} B parameters, {dtype_name} "
              f"on {result['device']}; built and saved in {result['model']['build_and_save_s']} s; {result['cpu_cores']} "
              f"CPU cores; attention {', '.join(attns)}", flush=True)

        def clips(folder: Path, n: int, seed0: int):
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                media.make_face_clip(folder / f"c{i:03d}.mp4", size=(width, height), seconds=args.seconds, seed=seed0 + i,
                                     motion="static", expression=(args.seconds * 0.5, args.seconds * 0.5 + 0.4))
            return discover(folder)

        model_dir = str(work / "model")

        def config(workers, model_batch: int = args.model_batch, attn: str = attns[0]):
            overrides = ["run.progress=false", f"run.workers={workers}", f"run.batch_size={max(args.clip_batch, model_batch)}",
                         f"faces.device={device}"]
            for stage in ("context", "classify"):
                overrides += [
                    f"{stage}.model.model={model_dir}", f"{stage}.model.dtype={dtype_name}", f"{stage}.model.device={device}",
                    f"{stage}.model.batch_size={model_batch}", f"{stage}.model.max_new_tokens={args.new_tokens}",
                    f"{stage}.model.attn_implementation={attn}", f"{stage}.image_size={args.image_size}",
                ]
            return load_config(None, overrides)

        def run(name: str, refs, cfg, **kw):
            ex = timed_executor(cfg.run.workers)
            res = Runner(cfg, work / f"run-{name}", cache_dir=work / "cache", log=io.StringIO(), executor=ex, **kw).run(refs)
            if res.n_failed or res.status != "complete":
                raise SystemExit(f"{name} run: {res.n_failed} failed, status {res.status}: see {work / f'run-{name}'}")
            return res, ex

        if args.warmup:
            run("warmup", clips(work / "warmup", args.warmup, 500), config("auto"))
        refs = clips(work / "clips", args.clips, 0)

        # faces at each worker setting (forced: computed anew each time), then keyframes at each
        for workers in _workers(args.faces_workers):
            _peak_reset()
            gpu, host = GpuProcesses(), TreeMemory(os.getpid())
            gpu.start()
            host.start()
            res, ex = run(f"faces-w{workers}", refs, config(workers), until="faces", force="faces")
            host.stop.set()
            host.join()
            seconds = res.reports[0].seconds
            point = {"workers": workers, "started": ex.plans["faces"].workers if "faces" in ex.plans else workers,
                     "why": ex.plans["faces"].why if "faces" in ex.plans else "run.workers", "clips": args.clips,
                     "seconds": round(seconds, 3), "clips_per_s": args.clips / seconds,
                     "gpu_peak_this_process_gib": _peak_gib(), **gpu.result(), "host_peak_gib": host.total_peak / 2**20}
            result["faces"].append(point)
            print(f"faces, run.workers={workers} ({point['started']} started: {point['why']}): {point['clips_per_s']:.2f} "
                  f"clips/s; GPU memory: this process {point['gpu_peak_this_process_gib'] or 0:.2f} GiB, per worker "
                  f"{point['gpu_per_worker_gib'] or 0:.2f} GiB; host {point['host_peak_gib']:.2f} GiB", flush=True)
            save()
        for workers in _workers(args.keyframes_workers):
            res, ex = run(f"keyframes-w{workers}", refs, config(workers), until="keyframes", force="keyframes")
            seconds = next(r.seconds for r in res.reports if r.stage == "keyframes")
            point = {"workers": workers, "started": ex.plans["keyframes"].workers if "keyframes" in ex.plans else workers,
                     "clips": args.clips, "seconds": round(seconds, 3), "clips_per_s": args.clips / seconds}
            result["keyframes"].append(point)
            print(f"keyframes, run.workers={workers} ({point['started']} started): {point['clips_per_s']:.2f} clips/s", flush=True)
            save()

        # context + classify: attention kernels x model batch sizes, within the budget
        for attn in attns:
            for bs in batches:
                if result["models"] and time.perf_counter() - t_start > args.budget_s:
                    result["skipped"].append(f"{attn} batch {bs}: past --budget-s {args.budget_s:g} s")
                    continue
                _, ex = run(f"models-{attn}-bs{bs}", refs, config("auto", bs, attn), force="context")
                point = {"attn_implementation": attn, "model_batch": bs, "run_batch": max(args.clip_batch, bs)}
                for name in ("context", "classify"):
                    st = ex.stats[name]
                    if st["generations"] and st["lengths"] != [args.new_tokens]:
                        print(f"warning: {name} generation lengths {st['lengths']} != {args.new_tokens}", file=sys.stderr)
                    point[name] = {"clips_per_s": st["clips"] / st["compute_s"], "compute_s": round(st["compute_s"], 3),
                                   "load_s": round(st["load_s"], 2), "peak_gib": st["peak_gib"],
                                   "ran_with": st["attn_implementation"], "generations": st["generations"],
                                   "new_tokens": st["new_tokens"], "phases_s": st["phases_s"]}
                point["context_plus_classify_clips_per_s"] = args.clips / (point["context"]["compute_s"] + point["classify"]["compute_s"])
                result["models"].append(point)
                print(f"{attn}, model batch {bs:3d}: context {point['context']['clips_per_s']:.3f} clips/s "
                      f"(peak {point['context']['peak_gib'] or 0:.1f} GiB), classify {point['classify']['clips_per_s']:.3f} "
                      f"clips/s (peak {point['classify']['peak_gib'] or 0:.1f} GiB)", flush=True)
                save()
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)

    best = {"faces": max(result["faces"], key=lambda p: p["clips_per_s"]),
            "keyframes": max(result["keyframes"], key=lambda p: p["clips_per_s"]),
            "context": max(result["models"], key=lambda p: p["context"]["clips_per_s"]),
            "classify": max(result["models"], key=lambda p: p["classify"]["clips_per_s"])}
    rate = {"faces": best["faces"]["clips_per_s"], "keyframes": best["keyframes"]["clips_per_s"],
            "context": best["context"]["context"]["clips_per_s"], "classify": best["classify"]["classify"]["clips_per_s"]}
    hours = {k: args.dataset_clips / v / 3600 for k, v in rate.items()}
    total_h = sum(hours.values())
    result["projection"] = {
        "dataset_clips": args.dataset_clips, "hours_per_stage": hours, "total_hours": total_h,
        "target_hours": TARGET_HOURS, "within_target": total_h <= TARGET_HOURS,
        "best": {"faces_workers": best["faces"]["workers"], "keyframes_workers": best["keyframes"]["workers"],
                 "context": [best["context"]["attn_implementation"], best["context"]["model_batch"]],
                 "classify": [best["classify"]["attn_implementation"], best["classify"]["model_batch"]]},
        "note": "one GPU with its host's CPUs, stages one after another over all clips, model loading excluded, the best "
                "measured setting per stage",
    }
    save()

    print()
    print(f"=== {result['device']}, {dtype_name}; {result['cpu_cores']} CPU cores; {args.clips} clips of {args.seconds:g} s "
          f"at {args.clip_size}; {args.new_tokens} generated tokens per caption/summary; {args.image_size}px crops ===")
    def gib(v) -> str:
        return "-" if v is None else f"{v:.2f} GiB"

    for p in result["faces"]:
        print(f"faces (MTCNN on {device}), run.workers={p['workers']} -> {p['started']}: {p['clips_per_s']:.2f} clips/s; GPU "
              f"memory: per worker {gib(p['gpu_per_worker_gib'])}, this process {gib(p['gpu_peak_this_process_gib'])}, all "
              f"processes {gib(p['gpu_all_processes_gib'])}; host {gib(p['host_peak_gib'])}")
    for p in result["keyframes"]:
        print(f"keyframes (CPU), run.workers={p['workers']} -> {p['started']}: {p['clips_per_s']:.2f} clips/s")
    print(f"{'attention':>18s} {'batch':>5s} {'context clips/s':>16s} {'peak GiB':>9s} {'load s':>7s} {'classify clips/s':>17s} "
          f"{'peak GiB':>9s} {'ctx+cls clips/s':>16s}")
    for p in result["models"]:
        c, q = p["context"], p["classify"]
        print(f"{p['attn_implementation']:>18s} {p['model_batch']:5d} {c['clips_per_s']:16.3f} {c['peak_gib'] or 0:9.2f} "
              f"{c['load_s']:7.1f} {q['clips_per_s']:17.3f} {q['peak_gib'] or 0:9.2f} {p['context_plus_classify_clips_per_s']:16.3f}")
    for p in result["models"]:
        for name in ("context", "classify"):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in sorted(p[name]["phases_s"].items(), key=lambda kv: -kv[1]))
            print(f"  {p['attn_implementation']} batch {p['model_batch']} {name} seconds: {phases}")
    for s in result["skipped"]:
        print(f"skipped: {s}")
    hs = result["projection"]["hours_per_stage"]
    print(f"projected wall time for {args.dataset_clips} clips on this machine: {total_h:.2f} h (faces {hs['faces']:.2f} h, "
          f"keyframes {hs['keyframes']:.2f} h, context {hs['context']:.2f} h, classify {hs['classify']:.2f} h; best "
          f"{result['projection']['best']}); target {TARGET_HOURS:g} h: {'met' if total_h <= TARGET_HOURS else 'not met'}")
    print(f"results written to {out_path} (total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
