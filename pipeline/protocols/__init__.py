"""Evaluation protocols of the papers, as one command each: ``folds`` (``dfer folds``: a dataset's cross-validation
folds, each optionally fine-tuned, run, reported and summarised) over ``splits`` (the official split files, matched to
the input's clips and checked to be disjoint). A layer above the tools: it is a client of the runner, of ``dfer
finetune`` and of the report."""
