"""Representation diagnostics (SocialFusion, ``shared/seeds/socialfusion.md``) and a frozen-encoder baseline.

Modules (each cheap to import; torch, transformers, peft and scikit-learn load when used):

* ``features``: frozen visual features of face crops/keyframes from any Hugging Face vision tower, cached per
  clip (``CACHE/features/``).
* ``probe``: task tables, train/validation split by video, class-balanced logistic-regression probes, UAR/WAR
  with bootstrap CIs per encoder and layer (*decodability*).
* ``conflict``: per-task gradients on shared parameters, pairwise cosines over training, share of conflicting
  steps, table and plot (*compatibility*).
* ``socialfusion``: frozen encoder -> MLP connector -> causal LM (optional LoRA), multi-task training with the
  samplers of ``pipeline/longtail.py``, safetensors save/load, and ``SocialFusionBackend`` for the classify stage.
* ``cli``: ``dfer probe``, ``dfer conflict``, ``dfer socialfusion train``.
"""
