"""The four LBNL training objectives (spec section 6), one function each, and lbnl's calibration and
distillation terms.

Every function takes projected embeddings laid out per training list: ``[B, n, D]`` for the
``n`` documents of each of ``B`` lists, with an optional boolean ``mask`` ``[B, n]`` marking the
real documents when lists have different lengths. Document 0 of each list is its positive, unless
the optional ``positive`` ``[B]`` says a list holds none (a lone negative: it still serves as an
in-batch negative). Scores are cosines divided by the temperature ``tau``; losses are averaged over lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: The weights of the total loss, L = L_rank + 0.45 L_disperse + 0.85 L_dual + 0.85 L_similar.
DEFAULT_WEIGHTS = {"rank": 1.0, "disperse": 0.45, "dual": 0.85, "similar": 0.85}


def _full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of matching rows: ``[..., D] x [..., D] -> [...]``."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def _list_scores(query: torch.Tensor, docs: torch.Tensor, tau: float) -> torch.Tensor:
    """``[B, n]``: each document's cosine with its query over ``tau``; ``query`` is ``[B, D]`` (one per list)
    or ``[B, n, D]`` (per document, when a list spans prompts)."""
    per_doc = query.unsqueeze(1).expand_as(docs) if query.dim() == 2 else query
    return _cosine_rows(per_doc, docs) / tau


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All cosines between two sets of vectors: ``[..., n, D] x [..., m, D] -> [..., n, m]``."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(-1, -2)


def info_nce(logits: torch.Tensor, mask: torch.Tensor | None = None, target: int = 0,
             rows: torch.Tensor | None = None) -> torch.Tensor:
    """``-log softmax(logits)[target]`` per row, averaged over rows; masked-out entries take no part.

    Args:
        logits: ``[R, n]`` scores already divided by the temperature.
        mask: ``[R, n]`` booleans, True for entries that exist; the target entry must exist.
        target: column of the positive in every row.
        rows: ``[rows]`` boolean, the rows that take part (default: all); none: a zero loss.
    """
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
    per_row = torch.logsumexp(logits, dim=-1) - logits[:, target]
    if rows is not None:
        if not bool(rows.any()):
            return logits.new_zeros((), dtype=torch.float32)
        per_row = per_row[rows.bool()]
    return per_row.mean()


def rank_loss(
    query: torch.Tensor,
    docs: torch.Tensor,
    tau: float,
    mask: torch.Tensor | None = None,
    in_batch_negatives: bool = False,
    positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_rank: InfoNCE of each list's query against its positive (document 0) and negatives.

    Args:
        query: ``[B, D]`` one query embedding per list, or ``[B, n, D]`` one per document (pointwise
            training, where every document is read in its own prompt with its own query token).
        docs: ``[B, n, D]`` document embeddings, the positive first.
        tau: temperature.
        mask: ``[B, n]`` real documents.
        in_batch_negatives: also score every real document of the other lists as a negative, with
            the list's query (averaged over its documents when given per document).
        positive: ``[B]`` lists whose document 0 is a positive (default: all); the others only lend
            their documents as in-batch negatives.
    """
    mask = _full_mask(docs, mask)
    logits = _list_scores(query, docs, tau)
    if in_batch_negatives and docs.shape[0] > 1:
        b, n, _ = docs.shape
        single = query if query.dim() == 2 else (query * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        extra = cosine_matrix(single, docs.reshape(b * n, -1)) / tau
        own = torch.arange(b, device=docs.device).repeat_interleave(n)
        extra_mask = mask.reshape(1, b * n) & (own[None, :] != torch.arange(b, device=docs.device)[:, None])
        logits = torch.cat([logits, extra], dim=1)
        mask = torch.cat([mask, extra_mask], dim=1)
    return info_nce(logits, mask, rows=positive)


def dispersive_loss(docs: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_disperse: ``log mean_{a<b} exp(s(a, b) / tau)`` over the unordered document pairs of a list.

    Lower when the documents of a list point in different directions; lists with fewer than two
    documents are skipped.
    """
    mask = _full_mask(docs, mask)
    n = docs.shape[1]
    sims = cosine_matrix(docs, docs) / tau
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=docs.device), diagonal=1)
    pair_mask = upper & mask[:, :, None] & mask[:, None, :]
    pairs = pair_mask.sum(dim=(1, 2))
    keep = pairs > 0
    if not bool(keep.any()):
        return docs.new_zeros((), dtype=torch.float32)
    flat = sims.masked_fill(~pair_mask, float("-inf")).flatten(1)[keep]
    return (torch.logsumexp(flat, dim=1) - torch.log(pairs[keep].float())).mean()


def dual_matching_loss(
    early_query: torch.Tensor, docs: torch.Tensor, tau: float, mask: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_dual: InfoNCE of the early query embedding (read right after the request line's query,
    before any document) against the list's documents, the positive first.

    ``early_query`` is ``[B, D]`` or ``[B, n, D]`` and ``positive`` as in :func:`rank_loss`.
    """
    return rank_loss(early_query, docs, tau, mask, positive=positive)


def calibration_loss(
    query: torch.Tensor, docs: torch.Tensor, tau: float, mask: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_calibrate (lbnl's addition, not in the paper): every positive, scored with its own list's
    query token, above every negative of the micro-batch scored with *its* own list's query token.

    L_rank only orders documents within a prompt, so a score carries no meaning outside its request:
    a relevant document alone and a hard negative alone may come out in either order. This term
    compares scores across prompts (and across queries), which is what a score threshold, or merging
    the results of several requests, relies on. ``-log(e^{s+} / (e^{s+} + sum_neg e^{s-}))`` per
    positive; ``query`` is ``[B, D]`` or ``[B, n, D]`` as in :func:`rank_loss`.
    """
    mask = _full_mask(docs, mask)
    b = docs.shape[0]
    positive = torch.ones(b, dtype=torch.bool, device=docs.device) if positive is None else positive.bool()
    scores = _list_scores(query, docs, tau)
    is_pos = torch.zeros_like(mask)
    is_pos[:, 0] = positive
    pos, neg = scores[is_pos & mask], scores[mask & ~is_pos]
    if pos.numel() == 0 or neg.numel() == 0:
        return docs.new_zeros((), dtype=torch.float32)
    logits = torch.cat([pos[:, None], neg[None, :].expand(pos.shape[0], -1)], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def order_loss(
    query: torch.Tensor, docs: torch.Tensor, reread_query: torch.Tensor, reread_docs: torch.Tensor, tau: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_order (lbnl's addition, not in the paper): a list's score distribution must not depend on the order
    its documents are read in. Symmetric KL divergence between the softmax of the scores (cosine / tau) in
    the main prompt and in a prompt holding the same documents in reverse order; lists of one document add
    nothing.

    Args:
        query, reread_query: ``[B, D]`` or ``[B, n, D]`` final query embeddings of the two readings (per
            document when the list spans prompts, as in :func:`rank_loss`).
        docs, reread_docs: ``[B, n, D]`` document embeddings, aligned: row ``[b, i]`` is the same document.
        tau: temperature.
        mask: ``[B, n]`` real documents.
    """
    mask = _full_mask(docs, mask)

    def log_probs(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        scores = _list_scores(q, d, tau).masked_fill(~mask, float("-inf"))
        return torch.log_softmax(scores, dim=-1).masked_fill(~mask, 0.0)  # no -inf - -inf at padding

    a, b = log_probs(query, docs), log_probs(reread_query, reread_docs)
    terms = ((a.exp() - b.exp()) * (a - b)).masked_fill(~mask, 0.0).sum(-1) / 2
    lists = mask.sum(-1) > 1
    if not bool(lists.any()):
        return docs.new_zeros((), dtype=torch.float32)
    return terms[lists].mean()


def teacher_agrees(teacher: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]``: the lists whose document 0 is a positive that the teacher scores above every other
    real document of the list (the gate of ``loss.distill_gate``).

    Args:
        teacher: ``[B, n]`` the teacher's scores.
        mask: ``[B, n]`` real documents.
        positive: ``[B]`` lists whose document 0 is a positive (default: all).
    """
    others = teacher.float().masked_fill(~mask, float("-inf"))[:, 1:]
    best_other = others.max(dim=1).values if others.shape[1] else teacher.new_full((teacher.shape[0],), float("-inf"))
    agrees = (teacher[:, 0].float() > best_other) & mask[:, 0]
    return agrees if positive is None else agrees & positive.to(agrees.device)


def distillation_loss(
    query: torch.Tensor, docs: torch.Tensor, teacher: torch.Tensor, tau: float, teacher_tau: float,
    mask: torch.Tensor | None = None, lists: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_distill (lbnl's addition): the KL divergence from a teacher's distribution over each list's
    documents to the student's, ``KL(softmax(t / teacher_tau) || softmax(s / tau))``.

    Hard labels say only which document is the positive; a teacher also says how far each negative
    is from it, and forgives a negative that is in truth relevant (a synonym's definition, a second
    answer). Lists with fewer than two real documents are skipped.

    Args:
        query: ``[B, D]`` or ``[B, n, D]`` as in :func:`rank_loss`.
        docs: ``[B, n, D]`` document embeddings.
        teacher: ``[B, n]`` the teacher's scores (cosines) of the same documents.
        tau: the student's temperature.
        teacher_tau: the teacher's temperature (its cosines spread less than a trained student's).
        mask: ``[B, n]`` real documents.
        lists: ``[B]`` the lists to distil (default: all), e.g. :func:`teacher_agrees`.
    """
    mask = _full_mask(docs, mask)
    keep = mask.sum(1) >= 2
    if lists is not None:
        keep = keep & lists.to(keep.device)
    if not bool(keep.any()):
        return docs.new_zeros((), dtype=torch.float32)
    student = _list_scores(query, docs, tau).masked_fill(~mask, float("-inf"))[keep]
    target = (teacher.float().to(docs.device) / teacher_tau).masked_fill(~mask, float("-inf"))[keep]
    log_p, log_q = F.log_softmax(target, dim=-1), F.log_softmax(student, dim=-1)
    real = mask[keep]
    kl = torch.where(real, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p)).sum(-1)
    return kl.mean()


def similarity_loss(
    docs: torch.Tensor, augmented: torch.Tensor, tau: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L_similar: each document must find its own augmented copy among the copies of its list.

    Args:
        docs: ``[B, n, D]`` embeddings from the original prompt.
        augmented: ``[B, n, D]`` embeddings of the augmented copies (from a second, shuffled prompt),
            aligned so that ``augmented[b, i]`` is the copy of ``docs[b, i]``.
        tau: temperature.
        mask: ``[B, n]`` real documents.
    """
    mask = _full_mask(docs, mask)
    n = docs.shape[1]
    logits = cosine_matrix(docs, augmented) / tau
    rows = mask.reshape(-1)
    logits = logits.reshape(-1, n)[rows]
    col_mask = mask[:, None, :].expand(-1, n, -1).reshape(-1, n)[rows]
    targets = torch.arange(n, device=docs.device).repeat(docs.shape[0])[rows]
    logits = logits.masked_fill(~col_mask, float("-inf"))
    per_doc = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)
    per_list = torch.zeros(docs.shape[0], device=docs.device).index_add(
        0, torch.arange(docs.shape[0], device=docs.device).repeat_interleave(n)[rows], per_doc
    )
    return (per_list / mask.sum(1).clamp(min=1)).mean()


@dataclass
class LossOutput:
    """The weighted total and every unweighted component (as floats, for logging)."""

    total: torch.Tensor
    components: dict[str, float]


def combine(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> LossOutput:
    """``sum(weights[k] * losses[k])`` over the components present; components with weight 0 are skipped."""
    total: torch.Tensor | None = None
    for name, value in losses.items():
        w = weights.get(name, 0.0)
        if w == 0:
            continue
        total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("every loss weight is zero; nothing to train")
    return LossOutput(total, {k: float(v.detach()) for k, v in losses.items()})

