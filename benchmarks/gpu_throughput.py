"""GPU throughput of the whole pipeline with a 3B-class Qwen2.5-VL: clips/s per stage, a batch-size sweep, peak GPU
memory, and the projected wall time for DFEW's 16,372 clips. One command, results written to a JSON file:

    python benchmarks/gpu_throughput.py --out gpu_throughput.json          # on a CUDA GPU, about 5-8 min on an H100
    python benchmarks/gpu_throughput.py --allow-cpu --tiny --clips 2 --out /tmp/smoke.json   # smoke run without a GPU

What runs (every stage through the real runner, ``pipeline.engine.runner.Runner``, on one cache):

1. **faces** with MTCNN on the GPU (``faces.device=cuda``), ``--clips`` synthetic clips (``tests/media.py``, the
   astronaut face with a 0.4 s expression, ``--clip-size`` at 25 fps, ``--seconds`` long), in this process
   (``run.workers=1``) so that its peak GPU memory can be read; clips/s;
2. **keyframes** on the CPU (clips/s);
3. **context** (captions of the in-between frames + one condensing generation per gap) and **classify**
   (keyframes + summaries, the 7 DFEW labels scored with KV reuse) with a *randomly initialised*
   ``Qwen2_5_VLForConditionalGeneration`` of Qwen2.5-VL-3B-Instruct's dimensions; for each model stage the model
   is loaded once (timed apart) and its batches are timed with CUDA synchronised; clips/s and peak GPU memory
   (``torch.cuda.max_memory_allocated``) per stage;
4. a **batch-size sweep**: context and classify again (``--force context``) at each ``--sweep`` value of
   ``*.model.batch_size`` (prompts per forward pass), until ``--budget-s`` seconds have passed since the start
   (the rest is skipped and said so), so that the whole command stays within a short GPU lease;
5. the **projection** for DFEW (16,372 clips, ``--dataset-clips``): per stage, clips / measured clips/s at the best
   batch size, summed (stages run one after another over all clips), for one GPU.

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
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def _peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def timed_executor(workers: int):
    """A :class:`pipeline.engine.executor.LocalExecutor` (per-clip stages on the local process pool) whose model stages run
    in this process with the model load and the batches timed apart (CUDA synchronised), every generation's length
    recorded and the peak GPU memory of each model stage read."""
    from pipeline.engine.batching import process_batches
    from pipeline.engine.executor import LocalExecutor

    class TimedExecutor(LocalExecutor):
        stats: dict[str, dict] = {}

        @staticmethod
        def _sync() -> float:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def map_batched(self, stage, cfg, todo, cache, batch_size):
            _peak_reset()
            t0 = self._sync()
            resources = stage.open(cfg)
            t1 = self._sync()
            lengths: list[int] = []
            model = getattr(resources, "model", None)
            if model is not None:
                inner = model.generate

                def generate(*a, **kw):
                    out = inner(*a, **kw)
                    lengths.extend([out.shape[1] - kw["input_ids"].shape[1]] * out.shape[0])
                    return out

                model.generate = generate
            try:
                t2 = self._sync()
                results = list(process_batches(stage, cfg, resources, todo, cache, batch_size))
                t3 = self._sync()
            finally:
                stage.close(resources)
            self.stats[stage.name] = {
                "clips": len(todo), "load_s": t1 - t0, "compute_s": t3 - t2, "generations": len(lengths),
                "new_tokens": sum(lengths), "lengths": sorted(set(lengths)),
                "failed": sum(1 for _, r in results if not r.ok), "peak_gib": _peak_gib(),
            }
            yield from results

    ex = TimedExecutor(workers)
    ex.stats = {}
    return ex


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_throughput.json", help="JSON file the results are written to")
    ap.add_argument("--clips", type=int, default=32, help="timed clips")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each synthetic clip (DFEW clips are 2-5 s)")
    ap.add_argument("--clip-size", default="640x360", help="frame size of the synthetic clips, WxH")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per caption and per gap summary (fixed)")
    ap.add_argument("--clip-batch", type=int, default=16, help="clips per stage batch (run.batch_size)")
    ap.add_argument("--model-batch", type=int, default=8, help="prompts per forward pass (*.model.batch_size) of the main run")
    ap.add_argument("--sweep", default="16,32", help="more *.model.batch_size values for context + classify ('' for none)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no sweep point after this many seconds")
    ap.add_argument("--image-size", type=int, default=224, help="face crop side sent to the model (64 tokens at 224)")
    ap.add_argument("--warmup", type=int, default=2, help="clips of an untimed warm-up run (all stages)")
    ap.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)), help="CPU workers for keyframes")
    ap.add_argument("--dataset-clips", type=int, default=DFEW_CLIPS, help="clips of the projected dataset (DFEW: 16,372)")
    ap.add_argument("--workdir", default=None, help="where to save the random checkpoint (default: a temporary folder)")
    ap.add_argument("--tiny", action="store_true", help="a much smaller model of the same architecture (smoke runs)")
    ap.add_argument("--allow-cpu", action="store_true", help="with --tiny: run on CPU in float32 (numbers are meaningless)")
    args = ap.parse_args(argv)

    import torch

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
    from tests import media

    t_start = time.perf_counter()
    width, height = (int(v) for v in args.clip_size.lower().split("x"))
    sweep = [int(v) for v in args.sweep.split(",") if v.strip()]
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run)", "dtype": dtype_name,
                    "torch": torch.__version__, "args": vars(args), "stages": {}, "sweep": [], "skipped_sweep": []}
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
              f"on {result['device']}; built and saved in {result['model']['build_and_save_s']} s", flush=True)

        def clips(folder: Path, n: int, seed0: int):
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                media.make_face_clip(folder / f"c{i:03d}.mp4", size=(width, height), seconds=args.seconds, seed=seed0 + i,
                                     motion="static", expression=(args.seconds * 0.5, args.seconds * 0.5 + 0.4))
            return discover(folder)

        model_dir = str(work / "model")

        def config(model_batch: int, workers: int):
            overrides = ["run.progress=false", f"run.workers={workers}", f"run.batch_size={args.clip_batch}",
                         f"faces.device={device}"]
            for stage in ("context", "classify"):
                overrides += [
                    f"{stage}.model.model={model_dir}", f"{stage}.model.dtype={dtype_name}", f"{stage}.model.device={device}",
                    f"{stage}.model.batch_size={model_batch}", f"{stage}.model.max_new_tokens={args.new_tokens}",
                    f"{stage}.image_size={args.image_size}",
                ]
            return load_config(None, overrides)

        def run(name: str, refs, cfg, **kw):
            ex = timed_executor(cfg.run.workers)
            res = Runner(cfg, work / f"run-{name}", cache_dir=work / "cache", log=io.StringIO(), executor=ex, **kw).run(refs)
            if res.n_failed or res.status != "complete":
                raise SystemExit(f"{name} run: {res.n_failed} failed, status {res.status}: see {work / f'run-{name}'}")
            return res, ex

        if args.warmup:
            run("warmup", clips(work / "warmup", args.warmup, 500), config(args.model_batch, args.workers))
        refs = clips(work / "clips", args.clips, 0)

        # faces on the GPU, in this process (peak memory readable), then keyframes on CPU workers
        _peak_reset()
        res, _ = run("faces", refs, config(args.model_batch, 1), until="faces")
        faces_s = res.reports[0].seconds
        result["stages"]["faces"] = {"clips": args.clips, "seconds": round(faces_s, 3), "clips_per_s": args.clips / faces_s,
                                     "peak_gib": _peak_gib(), "device": device, "workers": 1}
        res, _ = run("keyframes", refs, config(args.model_batch, args.workers), until="keyframes")
        kf_s = next(r.seconds for r in res.reports if r.stage == "keyframes")
        result["stages"]["keyframes"] = {"clips": args.clips, "seconds": round(kf_s, 3), "clips_per_s": args.clips / kf_s,
                                         "device": "cpu", "workers": args.workers}
        save()

        for i, bs in enumerate([args.model_batch] + [b for b in sweep if b != args.model_batch]):
            if i and time.perf_counter() - t_start > args.budget_s:
                result["skipped_sweep"].append(bs)
                continue
            _, ex = run(f"models-bs{bs}", refs, config(bs, args.workers), force="context" if i else None)
            point = {"model_batch": bs}
            for name in ("context", "classify"):
                st = ex.stats[name]
                if st["generations"] and st["lengths"] != [args.new_tokens]:
                    print(f"warning: {name} generation lengths {st['lengths']} != {args.new_tokens}", file=sys.stderr)
                point[name] = {"clips_per_s": st["clips"] / st["compute_s"], "compute_s": round(st["compute_s"], 3),
                               "load_s": round(st["load_s"], 2), "peak_gib": st.get("peak_gib"),
                               "generations": st["generations"], "new_tokens": st["new_tokens"]}
            point["context_plus_classify_clips_per_s"] = args.clips / (point["context"]["compute_s"] + point["classify"]["compute_s"])
            result["sweep"].append(point)
            print(f"model batch {bs:3d}: context {point['context']['clips_per_s']:.3f} clips/s "
                  f"(peak {point['context']['peak_gib'] or 0:.1f} GiB), classify {point['classify']['clips_per_s']:.3f} clips/s "
                  f"(peak {point['classify']['peak_gib'] or 0:.1f} GiB)", flush=True)
            save()
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)

    best = {name: max(result["sweep"], key=lambda p: p[name]["clips_per_s"]) for name in ("context", "classify")}
    per_clip = {"faces": 1 / result["stages"]["faces"]["clips_per_s"], "keyframes": 1 / result["stages"]["keyframes"]["clips_per_s"],
                "context": 1 / best["context"]["context"]["clips_per_s"], "classify": 1 / best["classify"]["classify"]["clips_per_s"]}
    total_h = args.dataset_clips * sum(per_clip.values()) / 3600
    result["projection"] = {
        "dataset_clips": args.dataset_clips,
        "hours_per_stage": {k: args.dataset_clips * v / 3600 for k, v in per_clip.items()},
        "best_model_batch": {k: best[k]["model_batch"] for k in best},
        "total_hours": total_h,
        "note": "one GPU, stages one after another over all clips, faces in one process, keyframes on CPU workers, "
                "model loading excluded, best batch size per model stage",
    }
    save()

    print()
    print(f"=== {result['device']}, {dtype_name}; {args.clips} clips of {args.seconds:g} s at {args.clip_size}; "
          f"{args.new_tokens} generated tokens per caption/summary; {args.image_size}px crops ===")
    f, k = result["stages"]["faces"], result["stages"]["keyframes"]
    print(f"faces (MTCNN on {device}, 1 process): {f['clips_per_s']:.2f} clips/s, peak GPU memory "
          f"{f['peak_gib'] if f['peak_gib'] is None else round(f['peak_gib'], 2)} GiB")
    print(f"keyframes (CPU, {k['workers']} workers): {k['clips_per_s']:.2f} clips/s")
    print(f"{'model batch':>11s} {'context clips/s':>16s} {'peak GiB':>9s} {'load s':>7s} {'classify clips/s':>17s} {'peak GiB':>9s} "
          f"{'load s':>7s} {'ctx+cls clips/s':>16s}")
    for p in result["sweep"]:
        c, q = p["context"], p["classify"]
        print(f"{p['model_batch']:11d} {c['clips_per_s']:16.3f} {c['peak_gib'] or 0:9.2f} {c['load_s']:7.1f} "
              f"{q['clips_per_s']:17.3f} {q['peak_gib'] or 0:9.2f} {q['load_s']:7.1f} {p['context_plus_classify_clips_per_s']:16.3f}")
    if result["skipped_sweep"]:
        print(f"sweep points skipped (past --budget-s {args.budget_s:g} s): {result['skipped_sweep']}")
    hs = result["projection"]["hours_per_stage"]
    print(f"projected wall time for {args.dataset_clips} clips on this GPU: {total_h:.2f} h "
          f"(faces {hs['faces']:.2f} h, keyframes {hs['keyframes']:.2f} h, context {hs['context']:.2f} h, "
          f"classify {hs['classify']:.2f} h; best batch {result['projection']['best_model_batch']})")
    print(f"results written to {out_path} (total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
