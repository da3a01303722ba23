"""Bounded truncation (issue #18, row 1): tokenizing a prefix gives exactly the full text's truncation.

:func:`lbnl.prompt.token_prefixes` cuts long texts at places where the tokenization of the prefix is
the start of the tokenization of the whole text. These tests hold that claim against the real
Qwen3 tokenizer on text chosen to break it, at every cut the rules allow, and check the NFC
facts the proof rests on over the whole of Unicode.
"""

from __future__ import annotations

import random
import time
import unicodedata

import pytest

from lbnl.truncation import _CUT, _LETTERS, _NONLETTERS, _cut_support, _next_cut, _splits_added, TextTooLongError
from lbnl.truncation import token_prefixes, truncate, truncate_info, truncate_many

PIECES = [
    "1234567890" * 7, "  ", "   \t ", "\n\n\n", "\r\n", " \n ", "中文文本，测试。", "日本語のテキスト「引用」！", "한국어 텍스트",
    "😀😀👍🏽", "👨‍👩‍👧", "e\u0301", "cafe\u0301 ", "Å", "\u212b", "<|embed_token|>", "<|im_end|>", "<|embed_",
    "token|>", "don't", "we're", "I'LL", " 'll", "!!!", "...", "--", "==", "<\u0338", "\u00a0", "\u3000", "Ωμέγα",
    "Привет мир", "x²", "½", "Ⅻ", "\u0bc6\u0bbe", "\u1100\u1161\u11a8", "\u0915\u093e", "tab\tend", "a", "Z", "9",
    " ", "_", "#", "ß", "İ", "ﬁ", "\ufeff", "\u200d", "\x00", "\x7f", "\u2028", "\x85", "http://example.com/a/b?c=1",
]


@pytest.fixture(scope="module", params=["qwen3", "smollm2"])
def tok(request, lbnl_tokenizer):
    """Both tokenizer shapes the cut rules are proved for: Qwen3 (with the LBNL tokens) and SmolLM2,
    lbnl-small's base (from the lbnl cache, skipped when it was never downloaded)."""
    if request.param == "qwen3":
        return lbnl_tokenizer
    from transformers import AutoTokenizer

    from lbnl.checkpoints.bases import cache_root

    path = cache_root() / "bases" / "smollm2-135m-instruct"
    if not (path / "tokenizer.json").exists():
        pytest.skip("the SmolLM2 base is not in the lbnl cache")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|embed_token|>", "<|rerank_token|>"]},
                                 replace_additional_special_tokens=False)
    return tokenizer


def tricky_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(n))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer([text], add_special_tokens=False)["input_ids"][0]


def test_the_tokenizers_are_supported(tok) -> None:
    added = _cut_support(tok)
    assert added is not None and "<|embed_token|>" in added and "<|im_end|>" in added


def test_every_cut_splits_the_tokenization(tok) -> None:
    """At every cut b the rules allow, ids(text) == ids(text[:b]) + ids(text[b:])."""
    lbnl_tokenizer = tok
    added = _cut_support(lbnl_tokenizer)
    rng = random.Random(18)
    checked = 0
    for _ in range(60):
        text = tricky_text(rng, 40)
        whole = ids(lbnl_tokenizer, text)
        for m in _CUT.finditer(text):
            b = m.start()
            if _splits_added(text, b, added):
                continue
            assert ids(lbnl_tokenizer, text[:b]) + ids(lbnl_tokenizer, text[b:]) == whole, (text[:b], text[b:])
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("kind", ["digits", "spaces", "cjk", "emoji", "mixed", "english", "specials", "newlines"])
def test_truncation_equals_whole_tokenization(tok, kind: str) -> None:
    lbnl_tokenizer = tok
    rng = random.Random(kind)
    text = {
        "digits": "".join(rng.choice("0123456789") for _ in range(50_000)),
        "spaces": ("word" + " " * rng.randint(1, 40)) * 3000,
        "cjk": "中文文本测试，日本語のテキスト。한국어" * 3000,
        "emoji": "😀 👍🏽 👨‍👩‍👧 " * 5000,
        "mixed": tricky_text(rng, 6000),
        "english": "The quick brown fox jumps over the lazy dog. " * 3000,
        "specials": "alpha <|embed_token|> beta<|rerank_token|>" * 3000,
        "newlines": "line one\r\n\n  \tline two!!\n\n" * 3000,
    }[kind]
    for max_length in (1, 7, 64, 2048):
        full = ids(lbnl_tokenizer, text)
        cut, count = truncate(text, lbnl_tokenizer, max_length)
        expected = lbnl_tokenizer.decode(full[:max_length], skip_special_tokens=False) if len(full) >= max_length \
            else text
        assert (cut, count) == (expected, min(len(full), max_length))
        (_, ), (_, ), (over, ) = truncate_info([text], lbnl_tokenizer, max_length)
        assert over == (len(full) > max_length)
        prefixes, prefix_ids = token_prefixes([text], lbnl_tokenizer, max_length + 1)
        assert prefix_ids[0] == full[: len(prefix_ids[0])] and len(prefix_ids[0]) >= min(len(full), max_length + 1)
        assert len(prefixes[0]) <= max(200_000, 64 * max_length), "the prefix is bounded by the limit"


def test_many_texts_batched(lbnl_tokenizer) -> None:
    rng = random.Random(3)
    texts = [tricky_text(rng, rng.choice([1, 5, 50, 3000])) for _ in range(30)] + ["", " ", "1" * 100_000]
    got = truncate_many(texts, lbnl_tokenizer, 100)
    want_texts, want_counts = [], []
    for text, full in zip(texts, lbnl_tokenizer(texts, add_special_tokens=False)["input_ids"]):
        if len(full) >= 100:
            want_texts.append(lbnl_tokenizer.decode(full[:100], skip_special_tokens=False))
        else:
            want_texts.append(text)
        want_counts.append(min(len(full), 100))
    assert got == (want_texts, want_counts)


def test_work_is_bounded_by_the_limit(lbnl_tokenizer) -> None:
    """15 MiB of digits: a few milliseconds, not minutes (issue #18 row 1)."""
    text = "1234567890" * (15 * 2**20 // 10)
    start = time.perf_counter()
    cut, count = truncate(text, lbnl_tokenizer, 2048)
    assert count == 2048 and cut == text[:2048]
    assert time.perf_counter() - start < 2.0


def test_a_run_without_a_cut_is_refused_only_when_asked(lbnl_tokenizer) -> None:
    text = "😀" * 50_000
    with pytest.raises(TextTooLongError) as info:
        truncate_info(["ok", text], lbnl_tokenizer, 16, max_run=10_000)
    assert info.value.index == 1
    assert truncate(text, lbnl_tokenizer, 16)[1] == 16, "without max_run it is tokenized whole"
    assert _next_cut("a" * 100 + " b", 10, (), 200) == 100


def test_cut_characters_are_nfc_inert() -> None:
    """The proof's NFC facts: no allowed character combines, decomposes or composes with a predecessor."""
    import re

    second = set()
    for cp in range(0x110000):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                second.add(chr(int(parts[1], 16)))
    second |= {chr(c) for c in range(0x1161, 0x1176)} | {chr(c) for c in range(0x11a8, 0x11c3)}  # Hangul V, T jamo
    allowed = re.compile(f"[{_LETTERS}{_NONLETTERS}]")
    letters = re.compile(f"[{_LETTERS}]")
    for cp in range(0x110000):
        ch = chr(cp)
        if not allowed.match(ch):
            continue
        assert unicodedata.combining(ch) == 0 and unicodedata.normalize("NFC", ch) == ch and ch not in second, hex(cp)
        assert unicodedata.category(ch) != "Cn", hex(cp)
        assert bool(letters.match(ch)) == unicodedata.category(ch).startswith("L"), hex(cp)


def test_a_lone_surrogate_is_an_input_error(lbnl_tokenizer) -> None:
    from lbnl.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="lone surrogate \\(U\\+D800\\) at character 1"):
        truncate_many(["ok", "a\ud800"], lbnl_tokenizer, 8)
