"""Small torch models and model wrappers that are not backends. Importing this package loads no model library.

- :mod:`pipeline.models.expression`: the embedded facial-expression classifier (mini-Xception, FER2013, 7 classes;
  weights shipped in ``weights/`` with their licences and provenance);
- :mod:`pipeline.models.vision`: frozen vision encoders (any Hugging Face vision tower as a feature extractor);
- :mod:`pipeline.models.socialfusion`: the SocialFusion model (frozen encoder -> connector -> causal LM).
"""
