"""The built-in default model (lbnl-small-v3, a stack of shipped adapters): shipped adapter, base from the package registry, no hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lbnl import Reranker
from lbnl.cli import main as cli_main
from lbnl.checkpoints.adapter import read_adapter_config
from lbnl.checkpoints.bases import resolve_base
from lbnl.checkpoints import default_model_path

DOCS = ["Green tea catechins and their effect on cardiovascular health.",
        "The 2014 World Cup final was played in Rio de Janeiro."]


def _adapter_chain() -> list[Path]:
    """The shipped adapters from the default down to the one on the plain base (adapters stack by name)."""
    from lbnl.checkpoints.builtin import WEIGHTS_DIR

    chain = [default_model_path()]
    while (base := WEIGHTS_DIR / read_adapter_config(chain[-1])["base_model"]).is_dir():
        chain.append(base)
    return chain


def test_the_default_adapter_ships_with_the_package() -> None:
    chain = _adapter_chain()
    configs = [read_adapter_config(p) for p in chain]
    assert configs[-1]["base_model"] == "smollm2-135m-instruct"
    assert all(c["mode"] == "listwise" and c["trained_steps"] > 0 for c in configs)
    assert sum(f.stat().st_size for p in chain for f in p.iterdir()) < 25_000_000


@pytest.fixture(scope="module")
def default_reranker() -> Reranker:
    return Reranker.from_pretrained(device="cpu")


def _adapted_layers() -> set[int]:
    from safetensors import safe_open

    layers = set()
    for path in _adapter_chain():
        with safe_open(str(path / "lora.safetensors"), "pt") as f:
            layers |= {int(k.split(".")[1]) for k in f.keys()}
    return layers


def test_default_model_is_the_base_with_the_trained_weights_merged(default_reranker: Reranker) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_base("smollm2-135m-instruct"), dtype=torch.float32).model
    ours = default_reranker.model.backbone
    adapted = _adapted_layers()
    assert adapted and len(ours.layers) == len(base.layers) == 30
    for i, (mine, theirs) in enumerate(zip(ours.layers, base.layers)):
        assert torch.equal(mine.mlp.down_proj.weight.float(), theirs.mlp.down_proj.weight) == (i not in adapted), i
    assert ours.get_input_embeddings().num_embeddings == base.get_input_embeddings().num_embeddings + 2


def test_default_model_reranks_and_the_cli_uses_it(default_reranker: Reranker, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    results = default_reranker.rerank("green tea and heart health", DOCS)
    assert sorted(r.index for r in results) == [0, 1]
    assert all(-1.0 <= r.relevance_score <= 1.0 for r in results)
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n")
    assert cli_main(["rerank", "-q", "green tea and heart health", "-d", str(docs), "--json"]) == 0
    printed = capsys.readouterr().out
    cli = {r["index"]: r["relevance_score"] for r in map(json.loads, printed.splitlines())}
    for r in results:
        assert abs(cli[r.index] - r.relevance_score) < 1e-5
