"""Prompt templates, label sets and presets: data, never Python strings. ``DIR`` is this folder, wherever dfer is
installed (a checkout or site-packages)."""

from pathlib import Path

DIR = Path(__file__).resolve().parent
