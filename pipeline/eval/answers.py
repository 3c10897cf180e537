"""Free-text answers to labels (``classify.answer=generate``): for models that give no log-probabilities.

:class:`AnswerParser` maps a model's answer to one label of a label set, or to None (an abstention):

1. the whole answer, stripped of surrounding spaces, quotes and punctuation and case-folded, is a label's name,
   one of its word aliases (``happiness``; numeric ids such as DFEW's ``1`` are never read from free text) or one
   of its ``synonyms`` (a list per label in the label file, e.g. ``prompts/labels/dfew.yaml``);
2. else the words of the answer (letters, digits, apostrophes and hyphens) are looked up the same way, single words
   and runs of consecutive words (for a multi-word synonym): if they name exactly one label, that label;
3. else (no label named, or two different labels named: "happy or sad") there is no answer: an abstention.

So "Happy." and "The emotion is happiness" give ``happy``, "unhappy" gives nothing unless a label file lists it.
Negation is not understood ("not happy" names happy): ask for a one-word answer. Parsing happens after the
model, when the run's outputs are written, so editing the synonyms recomputes nothing.
"""

from __future__ import annotations

import re
from typing import Iterable

from pipeline.core.errors import LabelError
from pipeline.eval.labels import LabelSet

_WORDS = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def _norm(text: str) -> str:
    return " ".join(_WORDS.findall(text.casefold()))


def _synonyms(label, source: str) -> list[str]:
    value = label.extra.get("synonyms") or []
    if not isinstance(value, list) or not all(isinstance(w, str) and w.strip() for w in value):
        raise LabelError(f"{source}: label '{label.name}': 'synonyms' must be a list of words")
    return value


class AnswerParser:
    """See the module docstring. Raises :class:`LabelError` naming the label file when two labels share a synonym."""

    def __init__(self, label_set: LabelSet):
        self.label_set = label_set
        self.words: dict[str, str] = {}
        for label in label_set.labels:
            spellings = [label.name, *(a for a in label.aliases if not a.strip().isdigit()),
                         *_synonyms(label, label_set.source)]
            for word in spellings:
                key = _norm(word)
                if not key:
                    continue
                other = self.words.setdefault(key, label.name)
                if other != label.name:
                    raise LabelError(f"{label_set.source}: '{word}' names both '{other}' and '{label.name}' "
                                     "(names, aliases and synonyms must each belong to one label)")
        self.longest = max(len(k.split()) for k in self.words)

    def named(self, text: str) -> list[str]:
        """The labels the answer names, in order of first mention (step 2 of the module docstring)."""
        words = _norm(text).split()
        found: list[str] = []
        for i in range(len(words)):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                label = self.words.get(" ".join(words[i : i + n]))
                if label is not None:
                    if label not in found:
                        found.append(label)
                    break
        return found

    def parse(self, text: str) -> str | None:
        """The label ``text`` names, or None (module docstring)."""
        whole = self.words.get(_norm(text))
        if whole is not None:
            return whole
        found = self.named(text)
        return found[0] if len(found) == 1 else None


def parse_answers(texts: Iterable[str], label_set: LabelSet) -> list[str | None]:
    """:meth:`AnswerParser.parse` of each text."""
    parser = AnswerParser(label_set)
    return [parser.parse(t) for t in texts]
