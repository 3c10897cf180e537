"""Closed-set label scoring of the transformers backend (``score_labels``).

The score of a label is ``log P(label tokens | prompt)`` summed over the label's tokens, from an fp32 log-softmax.
Label tokens are found as in lm-eval's ``_encode_pair``: encode ``prompt + separator + label`` (the separator and
end-of-turn token from :func:`.hf_templates.analyse_template`), check that the encoding of ``prompt`` is an exact
prefix (a ``ValueError`` otherwise), and keep the rest.

*How.* One forward pass over a right-padded batch of prompts (images encoded once per prompt) gives every label's
first-token log-probability at each prompt's last real position (``logits_to_keep`` picks only those positions, and
:func:`own_positions_only` hands the LM head each row's own one).
The prompt KV cache is then repeated over the labels (``Cache.batch_repeat_interleave``) and all label
continuations of all prompts run in a single batched forward pass: the attention mask is the prompt's padding mask
followed by the continuation's, and position ids are given explicitly, continuing each prompt at its own length.
For M-RoPE models (Qwen2-VL family) the prompt's 3-D positions come from the model's ``get_rope_index`` and the
continuation starts at ``len + rope_delta`` on all three axes, so no stale ``rope_deltas`` state inside the model
is used. The continuation pass scores the label's later tokens and the end-of-turn token after the full label
(``LabelScore.end_logprob``). If repeating the cache would hold more than ``kv_token_budget`` cached tokens
(prompts x labels x prompt length), the continuations run over a few prompts at a time (a sliced copy of the
cache each), with identical scores.

*Safety net.* The first time a backend scores, it also scores the first prompt the plain way (every
``prompt + label`` sequence in full) and compares; if the cached route disagrees (a model family whose positions
or cache this code does not handle), it logs a warning and uses the plain route from then on. ``scoring_mode``
(``"kv"`` or ``"full"``) says which route is in use.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from dataclasses import dataclass

from pipeline.backends.base import LabelScore
from pipeline.backends.hf_templates import Rendered

log = logging.getLogger(__name__)


@dataclass
class _LabelTokens:
    ids: list[int]
    end_id: int | None


@dataclass
class _Head:
    gathered: bool = False


@contextlib.contextmanager
def own_positions_only(model, column, width: int):
    """While active, the model's LM head (``get_output_embeddings()``) gets only position ``column[i]`` of row ``i``
    of the hidden states it is given (``(B, width, H)`` -> ``(B, 1, H)``), so the logits are ``(B, 1, V)`` and
    ``.gathered`` is set. ``logits_to_keep`` keeps the distinct last positions of a batch for *every* row (up to
    B x B positions when the prompts' lengths differ), and the LM head over a 150k-token vocabulary is the largest
    matrix product of a scoring pass. Anything else reaching the head (another shape, a second call) is left
    alone; without a head nothing changes."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    state = _Head()
    if head is None:
        yield state
        return

    def pick(module, args):
        hidden = args[0] if args else None
        if state.gathered or hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != (len(column), width):
            return None
        state.gathered = True
        rows = column.new_tensor(range(len(column))).to(hidden.device)
        return (hidden[rows, column.to(hidden.device)].unsqueeze(1), *args[1:])

    handle = head.register_forward_pre_hook(pick)
    try:
        yield state
    finally:
        handle.remove()


class LabelScoring:
    """The scoring routes of :class:`pipeline.backends.hf.TransformersBackend` (see the module docstring), a part of
    that class. They use its loaded model (``model``, ``tokenizer``, ``input_device``, ``pad_id``, ``_torch``,
    ``_rope_index``), its template analysis (``label_separator``, ``end_of_turn``, ``_add_special``), ``_encode``
    (the processor on a batch) and its scoring state (``scoring_mode``, ``_verified``, ``kv_token_budget``)."""

    def _label_tokens(self, prompt_text: str, labels: list[str]) -> list[_LabelTokens]:
        add = self._add_special(prompt_text)
        base = self.tokenizer(prompt_text, add_special_tokens=add)["input_ids"]
        end_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn) if self.end_of_turn else None
        out = []
        for label in labels:
            full = self.tokenizer(prompt_text + self.label_separator + label, add_special_tokens=add)["input_ids"]
            if full[: len(base)] != base:
                raise ValueError(
                    f"model {self.cfg.model}: the prompt's tokens are not a prefix of prompt+label tokens for label "
                    f"{label!r} (a token merges across the boundary); use a prompt whose generation prompt ends in a "
                    "special token or a newline"
                )
            ids = full[len(base) :]
            if not ids:
                raise ValueError(f"label {label!r} encodes to no tokens")
            out.append(_LabelTokens(ids=ids, end_id=end_id))
        return out

    def _prefill(self, rendered: list[Rendered], use_cache: bool = True):
        """Forward the right-padded prompts once. Returns (first-token logprobs (B,V) fp32, cache, inputs,
        next position (B,) for the first continuation token)."""
        torch = self._torch
        inputs = self._encode(rendered, padding_side="right")
        mask = inputs["attention_mask"]
        lens = mask.sum(1)
        extra = {}
        next_pos = lens.clone()
        self._position_rows = 0  # 0: plain 1-D positions; n: n-row multimodal positions (M-RoPE: 3)
        if self._rope_index is not None:
            params = inspect.signature(self._rope_index).parameters
            kw = {k: v for k, v in inputs.items() if k in params and k != "input_ids"}
            position_ids, deltas = self._rope_index(inputs["input_ids"], **kw)
            extra["position_ids"] = position_ids
            self._position_rows = position_ids.shape[0]
            # next text position = max position of the prompt + 1 = len + rope_delta (same on every axis)
            next_pos = lens + deltas.view(-1).to(lens.device)
        # logits_to_keep as a 1-D tensor of the distinct last positions: every transformers 5.x slices hidden states
        # with it alike ((B, K) rows); a per-row 2-D tensor is read as positions only since 5.2x (older releases
        # index with it and return 4-D logits)
        last = lens - 1
        kept = torch.unique(last)  # sorted
        keep = {"logits_to_keep": kept} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        column = torch.searchsorted(kept, last) if keep else last  # without logits_to_keep: every position's logits
        with own_positions_only(self.model, column, len(kept) if keep else mask.shape[1]) as head:
            out = self.model(**inputs, **extra, use_cache=use_cache, **keep)
        logits = out.logits
        if head.gathered:
            logits = logits[:, 0, :]
        else:
            logits = torch.take_along_dim(logits, column.to(logits.device).view(-1, 1, 1), dim=1)[:, 0, :]
        first = torch.log_softmax(logits.float(), dim=-1)
        return first, (out.past_key_values if use_cache else None), inputs, next_pos

    def _score_kv(self, rendered: list[Rendered], labels: list[str]) -> list[dict[str, LabelScore]]:
        toks = [self._label_tokens(r.text, labels) for r in rendered]
        first, cache, inputs, next_pos = self._prefill(rendered)
        B, L = len(rendered), len(labels)
        seqs = [t.ids + ([t.end_id] if t.end_id is not None else []) for row in toks for t in row]
        later = None  # (B*L, T, V) log-probs of the continuation positions
        if max(len(s) for s in seqs) > 1:
            # Repeating the prompt cache over labels costs B*L*P cached tokens; above the budget the
            # continuations run over a few prompts at a time (identical scores, less memory).
            P = inputs["attention_mask"].shape[1]
            per_pass = max(1, self.kv_token_budget // max(1, P * L))
            parts = []
            for a in range(0, B, per_pass):
                b = min(B, a + per_pass)
                part_cache = cache if b == B else copy.deepcopy(cache)  # the last part may consume the original
                if not (a == 0 and b == B):
                    part_cache.batch_select_indices(self._torch.arange(a, b, device=self.input_device))
                parts.append(
                    self._continue(part_cache, inputs["attention_mask"][a:b], next_pos[a:b], seqs[a * L : b * L], L)
                )
                del part_cache
            T = max(p.shape[1] for p in parts)
            later = parts[0] if len(parts) == 1 else self._torch.cat(
                [self._torch.nn.functional.pad(p, (0, 0, 0, T - p.shape[1])) for p in parts], 0
            )
        del cache

        def score(i: int, j: int, t: _LabelTokens) -> LabelScore:  # label j of prompt i: continuation row i*L + j
            r, lp = i * L + j, float(first[i, t.ids[0]])
            for k in range(1, len(t.ids)):
                lp += float(later[r, k - 1, t.ids[k]])
            end = float(later[r, len(t.ids) - 1, t.end_id]) if t.end_id is not None else None
            return LabelScore(logprob=lp, n_tokens=len(t.ids), exact=True, end_logprob=end)

        return [{label: score(i, j, toks[i][j]) for j, label in enumerate(labels)} for i in range(B)]

    def _continue(self, cache, prompt_mask, next_pos, seqs: list[list[int]], L: int):
        """One batched pass over the label continuations of some prompts. ``cache`` holds those prompts (one row
        each) and is repeated ``L`` times in place; row ``i*L + j`` continues prompt ``i`` with ``seqs[i*L + j]``.
        Returns fp32 log-probs ``(rows, T, V)``; position ``k`` predicts continuation token ``k + 1``."""
        torch = self._torch
        dev = self.input_device
        rows, T = len(seqs), max(len(s) for s in seqs)
        cont = torch.full((rows, T), self.pad_id, dtype=torch.long, device=dev)
        cmask = torch.zeros((rows, T), dtype=prompt_mask.dtype, device=dev)
        for r, seq in enumerate(seqs):
            cont[r, : len(seq)] = torch.tensor(seq, device=dev)
            cmask[r, : len(seq)] = 1
        cache.batch_repeat_interleave(L)
        attn = torch.cat([prompt_mask.repeat_interleave(L, 0), cmask], dim=1)
        pos = next_pos.repeat_interleave(L).view(-1, 1) + torch.arange(T, device=dev).view(1, -1)
        if self._position_rows:  # M-RoPE: text positions are equal on every axis
            pos = pos.unsqueeze(0).expand(self._position_rows, -1, -1)
        out = self.model(input_ids=cont, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True)
        return torch.log_softmax(out.logits.float(), dim=-1)

    def _score_full(self, rendered: list[Rendered], labels: list[str]) -> list[dict[str, LabelScore]]:
        """Plain route: every ``prompt + separator + label (+ end-of-turn)`` sequence in full, one prompt at a
        time, its labels batched (right padding). Images are re-encoded once per label."""
        results = []
        for r in rendered:
            lps, n_tokens = self.label_token_logprobs([r] * len(labels), labels, include_end=True)
            rows = [(n, lps[j].tolist()) for j, n in enumerate(n_tokens)]
            results.append({label: LabelScore(logprob=sum(vals[:n]), n_tokens=n, exact=True,
                                              end_logprob=vals[n] if self.end_of_turn else None)
                            for label, (n, vals) in zip(labels, rows)})
        return results

    def label_token_logprobs(self, rendered: list[Rendered], labels: list[str], include_end: bool = False, model=None):
        """Per-token log-probabilities of ``labels[i]`` written right after ``rendered[i]`` (one label per prompt).

        The label tokens are those :meth:`score_labels` scores (``prompt + label_separator + label``, checked as a
        prefix extension of the prompt's tokens); with ``include_end`` the end-of-turn token after the label is
        scored too. One forward pass over the right-padded batch; only the positions that predict label tokens
        reach the LM head (``logits_to_keep``) and the fp32 log-softmax. Gradients flow (no ``inference_mode``
        here; callers choose), so fine-tuning uses this for its loss: ``-logprobs.sum(1)`` is the negative of
        the score that ``classify`` stores. ``model`` replaces ``self.model`` for the forward pass (e.g. the
        accelerate/DDP-wrapped model being trained).

        Returns ``(logprobs, n_tokens)``: a ``(B, T)`` fp32 tensor whose row ``i`` holds the ``n_tokens[i]`` label
        tokens' log-probabilities (then the end-of-turn token's, if ``include_end`` and the template has one),
        zero-padded; and the label token counts.
        """
        torch = self._torch
        if len(rendered) != len(labels):
            raise ValueError(f"label_token_logprobs: {len(rendered)} prompts but {len(labels)} labels")
        seqs, n_tokens = [], []
        for r, label in zip(rendered, labels):
            t = self._label_tokens(r.text, [label])[0]
            end = [t.end_id] if include_end and t.end_id is not None else []
            seqs.append(t.ids + end)
            n_tokens.append(len(t.ids))
        tail = self.end_of_turn if include_end and self.end_of_turn else ""
        extra = [self.label_separator + lab + tail for lab in labels]
        inputs = self._encode(rendered, padding_side="right", extra_text=extra)
        lens = inputs["attention_mask"].sum(1).tolist()
        # logits at position p predict token p + 1: row i needs positions end - len(seq) - 1 .. end - 2
        wanted = [list(range(int(end) - len(seq) - 1, int(end) - 1)) for end, seq in zip(lens, seqs)]
        for j, (end, seq) in enumerate(zip(lens, seqs)):
            ids = inputs["input_ids"][j, int(end) - len(seq) : int(end)].tolist()
            if ids != seq:
                raise RuntimeError(f"label tokens misaligned for {labels[j]!r}: {ids} != {seq}")
        keep_pos = sorted({p for row in wanted for p in row})
        kwargs = {"use_cache": False}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = torch.tensor(keep_pos, device=self.input_device)
            column = {p: k for k, p in enumerate(keep_pos)}
        else:
            column = {p: p for p in keep_pos}
        logits = (model if model is not None else self.model)(**inputs, **kwargs).logits
        T = max(len(s) for s in seqs)
        out = torch.zeros((len(seqs), T), dtype=torch.float32, device=logits.device)
        for j, (row, seq) in enumerate(zip(wanted, seqs)):
            cols = torch.tensor([column[p] for p in row], device=logits.device)
            lp = torch.log_softmax(logits[j, cols].float(), dim=-1)
            target = torch.tensor(seq, device=logits.device).view(-1, 1)
            out[j, : len(seq)] = lp.gather(1, target).view(-1)
        return out, n_tokens

    def _verify_kv_route(self, rendered: Rendered, labels: list[str]) -> None:
        """Score one prompt both ways once; fall back to the plain route if the cached one disagrees."""
        self._verified = True
        try:
            kv = self._score_kv([rendered], labels)[0]
        except Exception as exc:  # a family whose cache or positions this code cannot drive
            log.warning("model %s: cached label scoring failed (%s); using full-sequence scoring", self.cfg.model, exc)
            self.scoring_mode = "full"
            return
        full = self._score_full([rendered], labels)[0]
        # fp32: agreement is ~1e-6 when the route is right, and a one-position error moves scores by >0.1
        tol = 2e-3 if self.model.dtype == self._torch.float32 else 0.15
        worst = max(abs(kv[lab].logprob - full[lab].logprob) for lab in labels)
        if worst > tol:
            log.warning(
                "model %s: cached label scores differ from full-sequence scores by %.3g; using full-sequence "
                "scoring (slower, images re-encoded per label)",
                self.cfg.model,
                worst,
            )
            self.scoring_mode = "full"
