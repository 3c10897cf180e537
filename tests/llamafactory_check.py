"""Load a ``dfer export --format`` dataset with LLaMA-Factory's own data code, as ``llamafactory-cli train`` does.

Run by the Python of a venv with LLaMA-Factory (``.ci/llamafactory-venv.sh``), not by dfer's::

    python tests/llamafactory_check.py DATASET_DIR NAME MODEL_DIR

It reads ``DATASET_DIR/dataset_info.json`` (LLaMA-Factory's parser), loads and converts the dataset (its loader and
ShareGPT converter), and tokenizes it for supervised fine-tuning with its ``qwen2_vl`` template and the processor of
``MODEL_DIR`` (its multimodal plugin, which refuses a sample whose ``<image>`` placeholders and images differ in
number). Prints one JSON object: the samples with, for each, the number of images, the number of image blocks in
the tokenized prompt, and the trained (unmasked) text.

LLaMA-Factory 0.9.5 imports torchaudio at the top of its multimodal plugin, for audio inputs only; where no
torchaudio wheel exists for the torch installed (dfer's), an empty module stands in for it, and LLaMA-Factory's
version check (it caps transformers and torch below dfer's) is turned off with its own switch.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import types


def main(dataset_dir: str, name: str, model_dir: str) -> None:
    os.environ["DISABLE_VERSION_CHECK"] = "1"
    if importlib.util.find_spec("torchaudio") is None:
        stand_in = types.ModuleType("torchaudio")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stand_in
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with tempfile.TemporaryDirectory() as out:
        model_args, data_args, training_args, _, _ = get_train_args({
            "model_name_or_path": model_dir, "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "dataset": name, "dataset_dir": dataset_dir, "template": "qwen2_vl", "cutoff_len": 16384,
            "output_dir": out, "overwrite_cache": True, "report_to": "none"})
        loaded = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(loaded["tokenizer"], data_args)
        train = get_dataset(template, model_args, data_args, training_args, stage="sft", **loaded)["train_dataset"]
        tok = loaded["tokenizer"]
        start = tok.convert_tokens_to_ids("<|vision_start|>")
        samples = [{"images": ex["images"] or [], "image_blocks": ex["input_ids"].count(start),
                    "answer": tok.decode([t for t in ex["labels"] if t != -100], skip_special_tokens=True).strip()}
                   for ex in train]
    print(json.dumps({"samples": samples}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
