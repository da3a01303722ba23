"""The prompt template, sanitising, truncation and block planning against the spec (sections 2 and 4)."""

from __future__ import annotations

import pytest

from lbnl.prompt import build_prompt, plan_blocks, sanitize, truncate, truncate_many

SYSTEM = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant "
    "they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage "
    "satisfies the intent. If an instruction is provided, you should follow the instruction when determining "
    "the ranking."
)


def spec_prompt(query: str, docs: list[str], instruction: str | None = None) -> str:
    """The template of spec section 2, written out by hand."""
    text = "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n"
    text += (f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
             f"Rank the passages based on their relevance to query: {query}\n")
    if instruction:
        text += "<instruct>\n" + instruction + "\n</instruct>\n"
    text += "\n".join(f'<passage id="{i}">\n{d}<|embed_token|>\n</passage>' for i, d in enumerate(docs)) + "\n"
    text += "<query>\n" + query + "<|rerank_token|>\n</query>"
    return text + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_prompt_matches_spec_character_for_character() -> None:
    expected = (
        "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n"
        "I will provide you with 2 passages, each indicated by a numerical identifier. "
        "Rank the passages based on their relevance to query: green tea?\n"
        '<passage id="0">\nfirst doc<|embed_token|>\n</passage>\n'
        '<passage id="1">\nsecond doc<|embed_token|>\n</passage>\n'
        "<query>\ngreen tea?<|rerank_token|>\n</query>"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert build_prompt("green tea?", ["first doc", "second doc"]) == expected
    assert spec_prompt("green tea?", ["first doc", "second doc"]) == expected


def test_instruction_block_and_sanitising() -> None:
    prompt = build_prompt("q<|rerank_token|>", ["a<|embed_token|>b"], instruction="only <|embed_token|>papers")
    assert prompt == spec_prompt("q", ["ab"], instruction="only papers")
    assert prompt.count("<|embed_token|>") == 1 and prompt.count("<|rerank_token|>") == 1
    assert build_prompt("q", ["a"], instruction="") == spec_prompt("q", ["a"])


def test_sanitize_cannot_be_forged_by_nesting() -> None:
    assert sanitize("x<|embed<|embed_token|>_token|>y") == "xy"
    assert sanitize("<|rerank_<|rerank_token|>token|>") == ""
    assert sanitize("plain <|im_start|> text") == "plain <|im_start|> text"


def test_early_query_token_follows_first_mention() -> None:
    prompt = build_prompt("q", ["a"], early_query_token=True)
    assert "relevance to query: q<|rerank_token|>\n<passage" in prompt
    assert prompt.count("<|rerank_token|>") == 2


def test_prompt_token_ids(lbnl_tokenizer) -> None:
    ids = lbnl_tokenizer(build_prompt("green tea", ["a", "b", "c"]), add_special_tokens=True)["input_ids"]
    embed, rerank = lbnl_tokenizer.convert_tokens_to_ids(["<|embed_token|>", "<|rerank_token|>"])
    assert (embed, rerank) == (151670, 151671)
    assert ids[:3] == [151644, lbnl_tokenizer.convert_tokens_to_ids("system"), 198]
    assert ids.count(embed) == 3 and ids.count(rerank) == 1
    tail = lbnl_tokenizer.convert_ids_to_tokens(ids[ids.index(rerank):])
    assert tail[0] == "<|rerank_token|>" and "<|im_end|>" in tail and "</think>" in tail
    # No BOS: the first token is <|im_start|>; each embed token directly follows its document's text.
    assert lbnl_tokenizer.decode(ids[ids.index(embed) - 1 : ids.index(embed) + 1]) == "a<|embed_token|>"


def test_truncate_by_decode(lbnl_tokenizer) -> None:
    text = "one two three four five six seven eight nine ten"
    n = len(lbnl_tokenizer.encode(text, add_special_tokens=False))
    assert truncate(text, lbnl_tokenizer, n + 1) == (text, n)
    cut, count = truncate(text, lbnl_tokenizer, 4)
    assert count == 4 and cut == lbnl_tokenizer.decode(lbnl_tokenizer.encode(text)[:4])
    assert text.startswith(cut) and cut != text
    # Truncation runs on raw text: a special-token string counts as one token and survives the decode.
    raw = "alpha <|embed_token|> beta gamma delta"
    cut, count = truncate(raw, lbnl_tokenizer, 3)
    assert count == 3 and cut == "alpha <|embed_token|>"
    assert truncate_many([text, ""], lbnl_tokenizer, 4) == ([truncate(text, lbnl_tokenizer, 4)[0], ""], [4, 0])


def test_plan_blocks_by_count() -> None:
    blocks = plan_blocks([5] * 260, query_length=10, model_max_length=131072, max_doc_length=2048)
    assert [len(b) for b in blocks] == [125, 125, 10]
    assert [i for b in blocks for i in b] == list(range(260))
    assert plan_blocks([3] * 4, 1, 1000, 10, block_size=3) == [[0, 1, 2], [3]]


def test_plan_blocks_by_capacity() -> None:
    # capacity = 100 - 2*5 = 90; a block closes once the remaining capacity is <= 20.
    lengths = [30, 30, 10, 5, 40, 40, 1]
    # 90-30=60, -30=30, -10=20 -> close [0,1,2]; 90-5=85, -40=45, -40=5 -> close [3,4,5]; [6] at the end.
    assert plan_blocks(lengths, query_length=5, model_max_length=100, max_doc_length=20) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        plan_blocks([1], 1, 100, 10, block_size=0)
