"""Small torch models that ship with dfer, weights included (``weights/``, with their licences and provenance).

- :mod:`pipeline.models.expression`: the embedded facial-expression classifier (mini-Xception, FER2013, 7 classes).
"""
