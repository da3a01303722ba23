"""Truncation to a token limit, as the official code does it, with tokenizer work bounded by the limit.

A text over the limit is replaced by the decode of its first ``max_length`` tokens (docs/spec.md).
A 15 MiB document must not cost a whole tokenization to keep 2,048 tokens of it, so for the
tokenizer shapes of lbnl's models (Qwen2/Qwen3 and SmolLM2 byte-level BPE) only a prefix that
provably tokenizes to the full text's first tokens is tokenized (:func:`token_prefixes`); the
result is exactly what tokenizing the whole text gives. Other tokenizers tokenize whole texts.
"""

from __future__ import annotations

import json
import re
import string
import weakref
from typing import Any, Protocol, Sequence

from .errors import InvalidInputError


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompt building needs."""

    def __call__(self, text: list[str], **kwargs: object) -> dict[str, list[list[int]]]: ...

    def decode(self, ids: Sequence[int], **kwargs: object) -> str: ...


def truncate(text: str, tokenizer: Tokenizer, max_length: int) -> tuple[str, int]:
    """Cut ``text`` to ``max_length`` tokens the way the official code does.

    Returns the (possibly decoded) text and its token count. A text whose count reaches the cap
    is replaced by the decode of its first ``max_length`` tokens, special tokens kept.
    """
    texts, counts = truncate_many([text], tokenizer, max_length)
    return texts[0], counts[0]


def truncate_many(texts: Sequence[str], tokenizer: Tokenizer, max_length: int) -> tuple[list[str], list[int]]:
    """:func:`truncate` for many texts with batched tokenizer calls.

    Long texts are tokenized only as far as needed (:func:`token_prefixes`); the result is exactly
    what tokenizing them whole would give.
    """
    out_texts, counts, _ = truncate_info(texts, tokenizer, max_length)
    return out_texts, counts


def truncate_info(texts: Sequence[str], tokenizer: Tokenizer, max_length: int, *,
                  max_run: int | None = None) -> tuple[list[str], list[int], list[bool]]:
    """:func:`truncate_many` plus, per text, whether it held more than ``max_length`` tokens.

    Tokenizer work is bounded by ``max_length`` (see :func:`token_prefixes`), not by the text.
    ``max_run`` is passed on to :func:`token_prefixes`.
    """
    if not texts:
        return [], [], []
    prefixes, all_ids = token_prefixes(texts, tokenizer, max_length + 1, max_run=max_run)
    out_texts, counts, cut = [], [], []
    for text, ids in zip(texts, all_ids):
        cut.append(len(ids) > max_length)
        if len(ids) >= max_length:
            ids = ids[:max_length]
            text = tokenizer.decode(ids, skip_special_tokens=False)
        out_texts.append(text)
        counts.append(len(ids))
    return out_texts, counts, cut


class TextTooLongError(ValueError):
    """A text has a run longer than ``max_run`` characters with no place where it can be cut exactly."""

    def __init__(self, index: int, max_run: int):
        super().__init__(f"text {index} has more than {max_run} characters without a word boundary, so it cannot be "
                         "truncated without tokenizing it whole")
        self.index = index
        self.max_run = max_run


#: Tokenizing the first ``FIRST_CUT_CHARS_PER_TOKEN * need`` characters usually yields ``need`` tokens.
FIRST_CUT_CHARS_PER_TOKEN = 8

# Characters that are NFC-inert: combining class 0, NFC quick check Yes, never the second element of
# a canonical composition (checked over all of Unicode by tests/test_prompt_bounds.py), with the same
# general category in every Unicode version since 3.0. Only they may sit around a cut.
_LETTERS = ("A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff\u0391-\u03a1\u03a3-\u03a9\u03b1-\u03c9"
            "\u0410-\u044f\u3041-\u3096\u30a1-\u30fa\u4e00-\u9fa5\uac00-\ud7a3")
_NONLETTERS = ("\x00-\x40\x5b-\x60\x7b-\x7f\u3000-\u3002\u300c-\u300f"
               "\uff01\uff08\uff09\uff0c\uff1a\uff1b\uff1f")
_PUNCT = re.escape(string.punctuation) + "\u3001\u3002\u300c-\u300f\uff01\uff08\uff09\uff0c\uff1a\uff1b\uff1f"
_SAFE = _LETTERS + _NONLETTERS
#: Zero-width matches at the cuts b where the pre-tokens of ``text[:b]`` are those of ``text`` before b
#: (for the Qwen2/Qwen3 split regex after NFC; see :func:`token_prefixes`):
#: a digit then any inert character; a letter then an inert non-letter (followed by an inert
#: character or the end); punctuation then a space or tab (likewise).
_CUT = re.compile(
    f"(?<=[0-9])(?=[{_SAFE}])"
    f"|(?<=[{_LETTERS}])(?=[{_NONLETTERS}](?:[{_SAFE}]|\\Z))"
    f"|(?<=[{_PUNCT}])(?=[ \\t](?:[{_SAFE}]|\\Z))"
)
#: The Qwen2/Qwen3 pre-tokenizer regex the cut rules are proved for.
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_SUPPORT: "weakref.WeakKeyDictionary[Any, tuple[str, ...] | None]" = weakref.WeakKeyDictionary()


def _cut_support(tokenizer: Any) -> tuple[str, ...] | None:
    """The added-token strings when ``tokenizer`` is a shape :data:`_CUT` is proved for, else ``None``.

    Those shapes: a fast BPE tokenizer whose added tokens are matched on the raw text without
    stripping, and either (Qwen2/Qwen3) an NFC (or no) normalizer, the Qwen2 split regex (isolated)
    then a byte-level step without its own regex, or (SmolLM2, GPT-2 style) no normalizer, a split
    around every digit, then the byte-level step with GPT-2's regex
    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``.
    """
    try:
        return _SUPPORT[tokenizer]
    except (KeyError, TypeError):
        pass
    support = None
    try:
        backend = tokenizer.backend_tokenizer
        normalizer = json.loads(backend.normalizer.__getstate__()) if backend.normalizer is not None else None
        pre = json.loads(backend.pre_tokenizer.__getstate__())
        steps = pre.get("pretokenizers", [])
        qwen2 = (  # Qwen2/Qwen3: NFC, the Qwen2 split regex, byte-level without its own regex
            normalizer in (None, {"type": "NFC"})
            and pre.get("type") == "Sequence" and len(steps) == 2
            and steps[0] == {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
                             "invert": False}
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex") is False
            and steps[1].get("add_prefix_space") is False
        )
        smollm = (  # SmolLM2 (lbnl-small's base): no normalizer, single digits, then the GPT-2 byte-level regex
            normalizer is None
            and pre.get("type") == "Sequence" and len(steps) == 2
            and steps[0] == {"type": "Digits", "individual_digits": True}
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex") is True
            and steps[1].get("add_prefix_space") is False
        )
        ok = ((qwen2 or smollm) and type(backend.model).__name__ == "BPE"
              and getattr(backend.model, "dropout", None) in (None, 0.0))
        added = list(tokenizer.added_tokens_decoder.values())
        if ok and all(not (t.normalized or t.lstrip or t.rstrip or t.single_word) for t in added):
            support = tuple(sorted({str(t.content) for t in added}))
    except Exception:  # noqa: BLE001 - anything unexpected: no shortcut, tokenize whole texts
        support = None
    try:
        _SUPPORT[tokenizer] = support
    except TypeError:
        pass
    return support


def _next_cut(text: str, start: int, added: tuple[str, ...], max_run: int | None) -> int:
    """The first safe cut at or after ``start`` (``len(text)`` if there is none).

    A cut inside an occurrence of an added token (``<|im_end|>``...) is skipped. With ``max_run``,
    raises :class:`TextTooLongError` (index -1) when no cut lies within ``max_run`` characters of ``start``.
    """
    n = len(text)
    if start >= n:
        return n
    limit = n if max_run is None else min(n, start + max_run)
    pos = start
    while True:
        m = _CUT.search(text, pos, min(n, limit + 2))
        if m is None or m.start() > limit:
            if limit < n:
                raise TextTooLongError(-1, max_run or 0)
            return n
        b = m.start()
        if not _splits_added(text, b, added):
            return b
        pos = b + 1


def _splits_added(text: str, b: int, added: tuple[str, ...]) -> bool:
    """Whether an occurrence of one of the ``added`` strings starts before ``b`` and ends after it."""
    for a in added:
        end = b + len(a) - 1
        i = text.find(a, max(0, b - len(a) + 1), end)
        while 0 <= i < b:
            if i + len(a) > b:
                return True
            i = text.find(a, i + 1, end)
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def find_lone_surrogate(text: str) -> int | None:
    """Position of the first lone surrogate in ``text``, or None. JSON can carry one (``"\\ud800"``), but
    it is not valid Unicode and no UTF-8 tokenizer can encode it, so every input path refuses it."""
    m = _SURROGATE.search(text)
    return m.start() if m else None


def check_unicode(text: str, where: str) -> str:
    """``text``, or an :class:`~lbnl.errors.InvalidInputError` naming ``where`` when it holds a lone surrogate."""
    at = find_lone_surrogate(text)
    if at is not None:
        raise InvalidInputError(f"{where} holds a lone surrogate (U+{ord(text[at]):04X}) at character {at}, "
                                "which is not valid Unicode")
    return text


def _tokenize(tokenizer: Any, texts: list[str], positions: list[int] | None = None) -> list[list[int]]:
    """Token ids without special tokens; a lone surrogate is an :class:`~lbnl.errors.InvalidInputError`."""
    try:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    except TypeError:
        for i, text in enumerate(texts):
            check_unicode(text, f"text {positions[i] if positions else i}")
        raise


def token_prefixes(texts: Sequence[str], tokenizer: Any, need: int, *,
                   max_run: int | None = None) -> tuple[list[str], list[list[int]]]:
    """For each text, a prefix and its token ids, the ids being the full text's first ones.

    Either the prefix is the whole text, or its ids number at least ``need`` and are exactly the
    first ids of the whole text's tokenization. So cutting the ids of the prefix to ``need`` or
    fewer tokens gives exactly what tokenizing the whole text would, with tokenizer work bounded
    by ``need`` rather than by the text.

    Why the ids agree: the tokenizer (see :func:`_cut_support`) splits out added tokens, normalizes
    each remaining segment with NFC, splits it with the Qwen2 regex and BPE-encodes every piece
    on its own. At a cut b found by :data:`_CUT`, (1) no added token spans b; (2) the characters
    at b-1, b (and b+1) are NFC-inert, so NFC(text) = NFC(text[:b]) + NFC(text[b:]) and the
    characters either side of b stay what they are; (3) every regex match starting before b ends
    at or before b and is decided by the same characters in ``text`` and ``text[:b]``: a digit is
    always a piece of its own and no alternative reads past it; a letter run ends at the first
    non-letter whatever follows it (the contractions ``'s``... end in a letter, so cannot span
    b); a run of punctuation followed by a space or tab ends there (``[\\r\\n]*`` reads
    nothing). So the pieces of ``text`` before b are the pieces of ``text[:b]``, and the ids of
    ``text`` start with the ids of ``text[:b]``. For the SmolLM2 shape the same cuts hold: there is
    no normalizer, every digit is split off on its own before the regex runs, and in GPT-2's
    regex a letter run ends at the first non-letter and a punctuation run at the first space.

    Texts shorter than ``FIRST_CUT_CHARS_PER_TOKEN * need`` characters, and every text of a
    tokenizer of another shape, are tokenized whole. A prefix that holds fewer than ``need``
    tokens is extended (its length doubled) until it does or is the whole text.

    Args:
        max_run: if given, raise :class:`TextTooLongError` rather than tokenize a run of more than
            ``max_run`` characters with no safe cut (one pre-token that long, e.g. 1 MB of ``aaa``
            or of emoji, costs seconds of BPE); ``None`` tokenizes it whole.
    """
    texts = list(texts)
    added = _cut_support(tokenizer)
    first = FIRST_CUT_CHARS_PER_TOKEN * max(1, need)
    ends = [len(t) for t in texts]
    if added is not None:
        for i, t in enumerate(texts):
            if len(t) > first:
                try:
                    ends[i] = _next_cut(t, first, added, max_run)
                except TextTooLongError as exc:
                    raise TextTooLongError(i, exc.max_run) from None
    prefixes = [t if e >= len(t) else t[:e] for t, e in zip(texts, ends)]
    ids = list(_tokenize(tokenizer, prefixes)) if prefixes else []
    while True:
        short = [i for i, (p, t, x) in enumerate(zip(prefixes, texts, ids)) if len(p) < len(t) and len(x) < need]
        if not short:
            break
        for i in short:
            try:
                ends[i] = _next_cut(texts[i], 2 * len(prefixes[i]), added or (), max_run)
            except TextTooLongError as exc:
                raise TextTooLongError(i, exc.max_run) from None
            prefixes[i] = texts[i][: ends[i]]
        again = _tokenize(tokenizer, [prefixes[i] for i in short], short)
        for i, x in zip(short, again):
            ids[i] = x
    return prefixes, [list(x) for x in ids]
