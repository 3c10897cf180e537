"""Warnings of model libraries that say nothing to a dfer user, silenced in one place."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def quiet_peft():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` name on every model it wraps (loading
    adapters for inference, and attaching them for training)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
