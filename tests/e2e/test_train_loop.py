"""The training loop end to end on tiny real models: learning a planted signal, exact resume, modes, CLI, configs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lbnl import InvalidInputError, Reranker
from lbnl.cli import main as cli_main
from lbnl.train.config import TrainConfig, documented_keys, from_dict, load_config, render_yaml
from lbnl.train.loop import Trainer, lr_factor, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOPICS = ["apple", "river", "violin", "tiger", "planet", "copper"]
FILLER = "the a of and with some many very old new small large green blue".split()


def write_planted(path: Path, n: int, seed: int = 0) -> Path:
    """Groups whose positive always contains the word "zebra" and whose negatives never do."""
    rng = random.Random(seed)

    def doc(word: str) -> str:
        words = [rng.choice(FILLER) for _ in range(6)]
        words.insert(rng.randrange(7), word)
        return " ".join(words)

    rows = [{"query": f"about {rng.choice(TOPICS)}", "positive": doc("zebra"),
             "negatives": [doc(rng.choice(TOPICS)) for _ in range(3)]} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted(tmp_path_factory.mktemp("toy") / "planted.jsonl", 160)


def overrides(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.base={base}", f"run.output_dir={out}", "data.source=jsonl", f"data.path={data}",
            "data.negatives=3", "run.progress=false", *extra]


def test_lr_schedules() -> None:
    cos = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cos[:2] == [0.5, 1.0] and cos[2] == 1.0
    assert all(a > b for a, b in zip(cos[2:], cos[3:])) and 0 < cos[-1] < 0.1
    lin = [lr_factor(s, 10, 0, "linear") for s in range(10)]
    assert lin[0] == 1.0 and lin[-1] == pytest.approx(0.1)
    assert {lr_factor(s, 10, 0, "constant") for s in range(10)} == {1.0}


def test_planted_signal_is_learned(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    """Loss falls, and on held-out lists the positive ends up ranked first, in both output forms."""
    out = tmp_path / "run"
    config = load_config(None, overrides(tiny_checkpoint, planted, out, "optim.lr=1e-3", "optim.max_steps=24",
                                         "optim.lists_per_batch=4", "data.validation_queries=12",
                                         "run.eval_every=0", "run.save_every=0"))
    result = train(config)
    trains = [r for r in result.history if r["type"] == "train"]
    vals = [r for r in result.history if r["type"] == "validation"]
    assert len(trains) == 24 and [v["step"] for v in vals] == [0, 24]
    first, last = np.mean([r["rank"] for r in trains[:4]]), np.mean([r["rank"] for r in trains[-4:]])
    assert last < 0.5 * first and last < 0.5 * math.log(4)
    assert np.mean([r["loss"] for r in trains[-4:]]) < np.mean([r["loss"] for r in trains[:4]])
    assert vals[-1]["ndcg@10"] > 0.9 > vals[0]["ndcg@10"]
    for name in ("train_log.jsonl", "loss_curve.png", "summary.json", "config.yaml", "validation_queries.txt"):
        assert (out / name).stat().st_size > 0
    held_out = (out / "validation_queries.txt").read_text().split()
    assert len(set(held_out)) == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["docs_per_s"] > 0 and summary["steps_per_s"] > 0
    # fresh lists never seen in training, reranked by both shipped forms
    fresh = write_planted(tmp_path / "fresh.jsonl", 12, seed=99)
    rows = [json.loads(line) for line in fresh.read_text().splitlines()]
    full = Reranker.from_pretrained(result.model_dir, device="cpu")
    adapter = Reranker.from_pretrained(result.adapter_dir, device="cpu")
    firsts = 0
    for row in rows:
        docs = [row["positive"], *row["negatives"]]
        ranked = full.rerank(row["query"], docs)
        firsts += ranked[0].index == 0
        from_adapter = {r.index: r.relevance_score for r in adapter.rerank(row["query"], docs)}
        np.testing.assert_allclose([from_adapter[r.index] for r in ranked], [r.relevance_score for r in ranked],
                                   atol=1e-4)
    assert firsts >= 11


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "trainable.safetensors"))


def test_interrupted_then_resumed_equals_uninterrupted(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    extra = ("optim.max_steps=4", "optim.lists_per_batch=2", "optim.grad_accum=2", "optim.lr=1e-3",
             "optim.warmup_steps=1", "model.lora_dropout=0.1", "data.validation_queries=4", "run.eval_every=2",
             "run.eval_at_start=false", "run.save_every=2", "run.keep_checkpoints=1", "run.save_full=false")
    whole = train(load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "whole", *extra)))

    def stop_at_3(step: int, record: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    config = load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "split", *extra))
    with pytest.raises(KeyboardInterrupt):
        Trainer(config).run(callbacks=[stop_at_3])
    assert [p.name for p in (tmp_path / "split" / "checkpoints").glob("step-*")] == ["step-00000003"]
    resumed = train(load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "split", *extra)))
    a, b = _final_state(tmp_path / "whole"), _final_state(tmp_path / "split")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [(r["type"], r["step"], r.get("loss"), r.get("ndcg@10")) for r in h]
    assert strip(resumed.history) == strip(whole.history)
    assert [r["step"] for r in resumed.history if r["type"] == "train"] == [1, 2, 3, 4]
    with pytest.raises(InvalidInputError, match="already holds checkpoints"):
        train(load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "split", *extra, "run.resume=false")))


def test_resume_past_a_torn_log_line_and_a_corrupt_latest_checkpoint(tiny_checkpoint: Path, planted: Path,
                                                                     tmp_path: Path) -> None:
    """A crash can leave half a log line and a damaged newest checkpoint: the run resumes from the one
    before it and ends where an uninterrupted run ends."""
    extra = ("optim.max_steps=4", "optim.lists_per_batch=2", "optim.lr=1e-3", "optim.warmup_steps=1",
             "data.validation_queries=0", "run.save_every=1", "run.keep_checkpoints=2", "run.save_full=false")
    whole = train(load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "whole", *extra)))

    def stop_at_3(step: int, record: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    out = tmp_path / "crash"
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(None, overrides(tiny_checkpoint, planted, out, *extra))).run(callbacks=[stop_at_3])
    assert [p.name for p in sorted((out / "checkpoints").glob("step-*"))] == ["step-00000002", "step-00000003"]
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"type": "train", "step": 8')  # a torn last line
    state = out / "checkpoints" / "step-00000003" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a truncated newest checkpoint
    resumed = train(load_config(None, overrides(tiny_checkpoint, planted, out, *extra)))
    strip = lambda h: [(r["type"], r["step"], r.get("loss")) for r in h]
    assert strip(resumed.history) == strip(whole.history)
    assert all(json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines())


def test_pointwise_full_finetune_in_batch_negatives_bf16_and_checkpointing(tiny_checkpoint: Path, planted: Path,
                                                                          tmp_path: Path) -> None:
    config = load_config(None, overrides(
        tiny_checkpoint, planted, tmp_path / "pw", "mode=pointwise", "loss.in_batch_negatives=true",
        "model.finetune=full", "model.autocast=bf16", "model.gradient_checkpointing=true", "optim.max_steps=2",
        "optim.lists_per_batch=2", "data.validation_queries=2", "run.eval_at_start=false"))
    trainer = Trainer(config)
    assert trainer.bf16
    result = trainer.run()
    trains = [r for r in result.history if r["type"] == "train"]
    assert all({"rank", "disperse", "dual", "similar"} <= set(r) and math.isfinite(r["loss"]) for r in trains)
    assert trains[0]["docs"] == 2 * 4
    assert result.adapter_dir is None and (result.model_dir / "model.safetensors").exists()  # full runs ship whole
    assert [r["step"] for r in result.history if r["type"] == "validation"] == [2]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_a_pointwise_run_is_validated_pointwise(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    """Validation reads a pointwise model as inference will: each candidate alone in its own prompt."""
    from lbnl.train.loop import ndcg_at_10

    config = load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "pw", "mode=pointwise",
                                         "model.autocast=off", "optim.max_steps=1", "data.validation_queries=6",
                                         "run.eval_at_start=false", "run.save_adapter=false", "run.save_full=false"))
    trainer = Trainer(config)
    trainer.run()
    val = trainer.data.validation
    alone = Reranker(trainer.model.inference_copy(), trainer.tokenizer)
    ranked = {}
    for q in val:
        lone = [alone.rerank(q.query, [trainer.data.docs[d]])[0].relevance_score for d in q.candidates]
        ranked[q.query_id] = [q.candidates[i] for i in sorted(range(len(lone)), key=lambda i: -lone[i])]
    want = ndcg_at_10(ranked, {q.query_id: q.qrels for q in val})
    assert trainer.validate()["ndcg@10"] == pytest.approx(want, abs=1e-9)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    from lbnl.train.lists import collate

    grads = []
    for flag in ("false", "true"):
        trainer = Trainer(load_config(None, overrides(
            tiny_checkpoint, planted, tmp_path / flag, f"model.gradient_checkpointing={flag}", "optim.max_steps=1",
            "data.validation_queries=0")))
        trainer.model.train()
        checkpointed = []
        for module in trainer.model.modules():
            real = getattr(module, "_gradient_checkpointing_func", None)
            if real is not None and getattr(module, "gradient_checkpointing", False):
                module._gradient_checkpointing_func = (
                    lambda *a, _real=real, **k: checkpointed.append(1) or _real(*a, **k))
        out = trainer.batch_losses(collate(trainer.sampler.lists(0, 2), trainer.pad_id))
        out.total.backward()
        assert bool(checkpointed) == (flag == "true"), f"gradient checkpointing={flag} ran {len(checkpointed)} times"
        grads.append(torch.cat([p.grad.reshape(-1) for p in trainer.params]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_plain_llama_causal_lm_trains_and_ships_an_adapter(planted: Path, tmp_path: Path,
                                                          qwen3_tokenizer_dir: Path) -> None:
    from test_train_model import build_plain_causal_lm

    base = build_plain_causal_lm(tmp_path / "llama", qwen3_tokenizer_dir, model_type="llama")
    result = train(load_config(None, overrides(
        base, planted, tmp_path / "run", "optim.max_steps=2", "optim.lists_per_batch=2", "data.validation_queries=2",
        "run.eval_at_start=false", "run.adapter_dtype=bfloat16", "optim.lr=1e-2")))
    meta = json.loads((result.adapter_dir / "lbnl_adapter.json").read_text())
    assert meta["base_model"] == str(base.resolve()) and meta["vocab_size"] == meta["base_vocab_size"] + 2
    docs = ["zebra one two", "apple three four", "river five"]
    a = Reranker.from_pretrained(result.adapter_dir, device="cpu").rerank("about apple", docs)
    b = Reranker.from_pretrained(result.model_dir, device="cpu").rerank("about apple", docs)
    assert [r.index for r in a] == [r.index for r in b]
    np.testing.assert_allclose([r.relevance_score for r in a], [r.relevance_score for r in b], atol=1e-4)


def test_cli_train_config_file_and_overrides(tiny_checkpoint: Path, planted: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model:
  base: {tiny_checkpoint}
data:
  source: jsonl
  path: {planted}
  negatives: 2
  validation_queries: 2
optim:
  max_steps: 50
  lists_per_batch: 1
run:
  output_dir: {tmp_path / 'cli-run'}
  eval_at_start: false
  progress: false
""")
    assert cli_main(["train", "--config", str(config), "--max-steps", "1", "--set", "loss.similar=0",
                     "--set", "loss.dual=0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and Path(summary["adapter"]).is_dir()
    saved = load_config(tmp_path / "cli-run" / "config.yaml")
    assert saved.optim.max_steps == 1 and saved.loss.similar == 0 and saved.data.negatives == 2
    assert cli_main(["train", "--config", str(config), "--set", "optim.learning_rate=1"]) == 2
    assert "unknown config key 'optim.learning_rate'" in capsys.readouterr().err
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert cli_main(["train", "--print-defaults"]) == 0
    assert capsys.readouterr().out == render_yaml(TrainConfig())


def test_configs_are_valid_and_every_key_documented() -> None:
    import yaml

    keys = documented_keys()
    assert all(len(doc) > 15 for doc in keys.values())
    assert (CONFIGS / "reference.yaml").read_text() == render_yaml(TrainConfig()), \
        "regenerate with: lbnl train --print-defaults > configs/reference.yaml"
    for path in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        config = from_dict(raw)
        if path.name != "reference.yaml":
            config.validate()
        for section, values in raw.items():
            for key in values if isinstance(values, dict) else [section]:
                assert (f"{section}.{key}" if isinstance(values, dict) else key) in keys


def test_sigterm_checkpoints_and_the_same_command_resumes(tiny_checkpoint: Path, planted: Path,
                                                          tmp_path: Path) -> None:
    """A scheduler's kill (SIGTERM) stops like Ctrl-C: a checkpoint of the last finished step, exit 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "lbnl", "train", "--no-progress", "--set", "run.save_every=0",
               "--set", "run.eval_every=0", "--set", "data.validation_queries=0", "--set", "optim.max_steps=100000",
               *[a for kv in overrides(tiny_checkpoint, planted, out)[:-1] for a in ("--set", kv)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    saved = sorted((out / "checkpoints").glob("step-*"))
    assert saved and int(saved[-1].name.split("-")[1]) >= 2
    assert not (out / "adapter").exists()


def test_a_stop_requested_inside_the_weight_update_lands_after_it(tiny_checkpoint: Path, planted: Path,
                                                                   tmp_path: Path) -> None:
    """What ``lbnl train``'s SIGINT/SIGTERM handler calls, arriving mid-update (the CI flake: a kill there used to
    save nothing): the update finishes, then the run stops with a checkpoint of that whole step."""
    out = tmp_path / "run"

    def trainer_to(max_steps: int) -> Trainer:
        return Trainer(load_config(None, overrides(tiny_checkpoint, planted, out, "run.save_every=0",
                                                   "run.eval_every=0", "data.validation_queries=0",
                                                   f"optim.max_steps={max_steps}")))

    trainer = trainer_to(50)
    update = trainer.optimizer.step
    arrived = []

    def interrupted_update(*args: object, **kwargs: object) -> object:
        if trainer.step == 2:
            arrived.append(trainer.step)
            trainer.request_stop()          # as the signal handler would, between two bytecodes of the update
        return update(*args, **kwargs)

    trainer.optimizer.step = interrupted_update
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert arrived == [2] and trainer.step == 3
    assert [p.name for p in sorted((out / "checkpoints").glob("step-*"))] == ["step-00000003"]
    resumed = trainer_to(4)
    resumed.run()
    assert resumed.step == 4
    with pytest.raises(KeyboardInterrupt):
        resumed.request_stop()              # outside an update: at once, as Ctrl-C


def test_a_second_stage_continues_the_list_stream(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    """data.start_list: step 1 of a second stage reads the lists after the first stage's, not the same ones."""
    extra = ("optim.lists_per_batch=2", "optim.grad_accum=2", "data.validation_queries=0", "run.save_full=false")
    first = Trainer(load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "a", *extra)))
    second = Trainer(load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "b", *extra,
                                                 "data.start_list=8")))
    for trainer in (first, second):
        calls: list[tuple[int, int]] = []
        read = trainer.sampler.lists
        trainer.sampler.lists = lambda start, count, read=read, calls=calls: calls.append((start, count)) or read(
            start, count)
        trainer.train_step()
        trainer.train_step()
        trainer.calls = calls
    assert first.calls == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert second.calls == [(8, 2), (10, 2), (12, 2), (14, 2)]
    with pytest.raises(InvalidInputError, match="start_list"):
        load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "c", "data.start_list=-1"))


def test_calibration_with_lone_splits_separates_lone_documents(tiny_checkpoint: Path, planted: Path,
                                                               tmp_path: Path) -> None:
    """loss.calibrate + data.lone_split alone teach a relevant document scored alone to beat lone negatives."""
    out = tmp_path / "cal"
    config = load_config(None, overrides(tiny_checkpoint, planted, out, "optim.lr=1e-3", "optim.max_steps=24",
                                         "optim.lists_per_batch=4", "data.validation_queries=0",
                                         "loss.rank=0", "loss.disperse=0", "loss.dual=0", "loss.similar=0",
                                         "loss.calibrate=1", "data.lone_split=0.5", "run.save_every=0"))
    trainer = Trainer(config)
    splits = [trainer.sampler.is_lone_split(s) for s in range(0, 24 * 4, 4)]
    assert 0 < sum(splits) < 24                                      # both kinds of micro-batch occur
    result = trainer.run()
    trains = [r for r in result.history if r["type"] == "train"]
    assert all("calibrate" in r for r in trains) and "rank" in trains[0]
    assert np.mean([r["calibrate"] for r in trains[-4:]]) < np.mean([r["calibrate"] for r in trains[:4]])
    rows = [json.loads(line) for line in write_planted(tmp_path / "fresh.jsonl", 12, seed=7).read_text().splitlines()]

    def lone_wins(reranker: Reranker) -> int:
        wins = 0
        for row in rows:
            pos = reranker.score(row["query"], [row["positive"]])[0]
            wins += all(pos > reranker.score(row["query"], [neg])[0] for neg in row["negatives"])
        return wins

    before = lone_wins(Reranker.from_pretrained(tiny_checkpoint, device="cpu"))
    after = lone_wins(Reranker.from_pretrained(result.model_dir, device="cpu"))
    assert after >= 10 and after > before


def held_out_component(trainer: Trainer, name: str):
    """A function measuring the mean of one loss component over lists 400-439 of the stream, which the
    short runs here never see."""
    from lbnl.train.lists import collate

    held = [collate(trainer.sampler.lists(s, 4), trainer.pad_id) for s in range(400, 440, 4)]

    def measure() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return float(np.mean([trainer.batch_losses(b).components[name] for b in held]))

    return measure


def test_order_term_brings_the_two_readings_together(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    """loss.order: each list is also read in reverse (one more prompt per list, the lone lists excepted), and
    the two readings' score distributions of lists the run never saw move closer."""
    config = load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "order", "optim.lr=3e-3",
                                         "optim.max_steps=16", "optim.lists_per_batch=4", "data.validation_queries=0",
                                         "loss.rank=1", "loss.disperse=0", "loss.dual=0", "loss.similar=0",
                                         "loss.order=1", "run.save_every=0"))
    trainer = Trainer(config)
    lists = trainer.sampler.lists(0, 4)
    assert all(len(x.prompts) == (2 if x.n_docs > 1 else 1) for x in lists)
    held_out_order = held_out_component(trainer, "order")
    before = held_out_order()
    result = trainer.run()
    trains = [r for r in result.history if r["type"] == "train"]
    assert all("order" in r and "rank" in r for r in trains)
    assert before > 0 and held_out_order() < 0.8 * before


def test_distillation_follows_the_teacher(tiny_checkpoint: Path, planted: Path, tmp_path: Path) -> None:
    """loss.distill alone: the student's list distributions move towards a (tiny, real) teacher's,
    in ordinary lists and in lone splits (one list across prompts)."""
    from lbnl.testing.checkpoints import build_tiny_teacher

    teacher = build_tiny_teacher(tmp_path / "teacher")
    config = load_config(None, overrides(tiny_checkpoint, planted, tmp_path / "distill", "optim.lr=3e-3",
                                         "optim.max_steps=24", "optim.lists_per_batch=4", "data.validation_queries=0",
                                         "loss.rank=0", "loss.disperse=0", "loss.dual=0", "loss.similar=0",
                                         "loss.distill=1", f"loss.teacher={teacher}", "loss.teacher_temperature=0.005",
                                         "data.lone_split=0.5", "run.save_every=0"))
    trainer = Trainer(config)
    splits = [trainer.sampler.is_lone_split(s) for s in range(0, 24 * 4, 4)]
    assert 0 < sum(splits) < 24
    held_out_kl = held_out_component(trainer, "distill")
    before = held_out_kl()
    result = trainer.run()
    trains = [r for r in result.history if r["type"] == "train"]
    assert all("distill" in r and "calibrate" not in r for r in trains)
    assert trainer.teacher is not None and trainer.teacher.texts_encoded > 0     # the teacher really scored
    assert min(r["distill"] for r, s in zip(trains, splits) if s) > 0            # lone splits are distilled too
    assert held_out_kl() < 0.95 * before                              # closer to the teacher on unseen lists


def test_gated_distillation_teaches_only_the_lists_the_teacher_ranks_right(tiny_checkpoint: Path, planted: Path,
                                                                          tmp_path: Path, monkeypatch) -> None:
    """loss.distill_gate: the distillation term of a micro-batch covers exactly the lists whose positive the
    teacher scores first (every list: the ungated term; none: 0)."""
    from lbnl.testing.checkpoints import build_tiny_teacher
    from lbnl.train import losses as L
    from lbnl.train.lists import collate

    teacher = build_tiny_teacher(tmp_path / "teacher")
    base = overrides(tiny_checkpoint, planted, tmp_path / "gate", "optim.lists_per_batch=4", "data.validation_queries=0",
                     "loss.distill=1", f"loss.teacher={teacher}", "run.save_every=0")
    gated = Trainer(load_config(None, [*base, "loss.distill_gate=true"]))
    plain = Trainer(load_config(None, base))
    batches = [collate(plain.sampler.lists(s, 4), plain.pad_id) for s in range(0, 40, 4)]
    real = L.teacher_agrees
    seen: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    def distill(trainer: Trainer, batch) -> float:
        trainer.model.eval()
        with torch.no_grad():
            return float(trainer.batch_losses(batch).components["distill"])

    monkeypatch.setattr(L, "teacher_agrees", spy)
    values = [(distill(gated, b), distill(plain, b)) for b in batches]
    assert len(seen) == len(batches)                                   # the gate ran for every micro-batch
    for (g, p), agree in zip(values, seen):
        if not bool(agree.any()):
            assert g == 0.0
        elif bool(agree.all()):
            assert g == pytest.approx(p, rel=1e-5)
    mixed = [(g, p) for (g, p), agree in zip(values, seen) if bool(agree.any()) and not bool(agree.all())]
    assert mixed and any(g != pytest.approx(p, rel=1e-5) for g, p in mixed)  # some lists really left out
    monkeypatch.setattr(L, "teacher_agrees",
                        lambda teacher, mask, positive=None: torch.zeros(mask.shape[0], dtype=torch.bool))
    assert distill(gated, batches[0]) == 0.0
