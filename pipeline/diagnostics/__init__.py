"""Representation diagnostics (SocialFusion, ``shared/seeds/socialfusion.md``) and a frozen-encoder baseline.

Modules (each cheap to import; torch, transformers, peft and scikit-learn load when used): ``features`` (the
``features`` stage run through the runner once per encoder, and its cached arrays), ``probe`` (class-balanced
logistic-regression probes per encoder and layer: *decodability*), ``conflict`` (pairwise cosines of per-task
gradients on shared parameters: *compatibility*), ``socialfusion`` (multi-task training of
:mod:`pipeline.models.socialfusion`) and ``commands`` (``dfer probe``, ``dfer conflict``, ``dfer socialfusion train``).
"""
