"""Label sets, the readers of annotation files and the matching of their ids to video ids.

Modules: ``sets`` (label sets and their aliases), ``readers`` (the generic CSV, label counts, the official files of
DFEW, FERV39k and MAFW, and :func:`read_labels` for every format), ``matching`` (:func:`match_labels`). Callers import
from ``pipeline.eval.labels``.
"""

from pipeline.eval.labels.matching import LabelMatch, match_labels
from pipeline.eval.labels.readers import (LABEL_FORMATS, read_dfew_split, read_ferv39k_split, read_label_counts,
                                          read_label_csv, read_labels, read_mafw_split)
from pipeline.eval.labels.sets import BUILTIN_LABEL_SETS, LABELS_DIR, Label, LabelError, LabelSet, load_label_set

__all__ = ["BUILTIN_LABEL_SETS", "LABELS_DIR", "LABEL_FORMATS", "Label", "LabelError", "LabelMatch", "LabelSet",
           "load_label_set", "match_labels", "read_dfew_split", "read_ferv39k_split", "read_label_counts",
           "read_label_csv", "read_labels", "read_mafw_split"]
