"""The training loop: plain PyTorch, resumable, validated, logged.

One optimizer step takes ``grad_accum`` micro-batches of ``lists_per_batch`` lists. Each
micro-batch is one right-padded forward over the main prompts (with the early query token when
L_dual is on), the augmented, shuffled prompts (when L_similar is on) and the main prompts' documents
in reverse order (when L_order is on); the embeddings are read at gathered positions and the
objectives of :mod:`lbnl.train.losses` combined. Checkpoints
hold the trainable tensors, optimizer, scheduler and RNG states; the data stream is a function of
the step, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..attention import use_chunked_attention
from ..checkpoints import save_official
from ..errors import InvalidInputError
from ..hardware import cpu_has_fast_bf16, release_memory, resolve_attention, resolve_device
from . import losses as L
from .config import TrainConfig, render_yaml, to_dict
from .lists import Batch, ListEncoder, ListSampler, collate
from .sources import SearcherFactory, TrainData, build_train_data, default_searcher
from .modeling import TrainableLBNL, load_base

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss_curve.png"
SUMMARY_FILE = "summary.json"
#: The loss and its components, as logged, shown on the progress bar and plotted.
COMPONENTS = ("loss", "rank", "disperse", "dual", "similar", "calibrate", "distill", "order")
#: The held-out query ids, one per line (``lbnl eval --query-ids`` reads it).
VALIDATION_FILE = "validation_queries.txt"
#: Config keys that may change between a run and its resumption without a warning.
_RESUME_SAFE = {"run.resume", "run.progress", "run.eval_every", "run.save_every", "run.keep_checkpoints",
                "run.log_every", "run.save_full", "run.save_adapter", "run.adapter_base", "run.save_dtype",
                "run.adapter_dtype", "run.eval_at_start", "model.device"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

StepCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a run produced: the output directory, steps done, the log records, and the output forms."""

    output_dir: Path
    steps: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    model_dir: Path | None = None
    adapter_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier of update ``step`` (0-based): linear warm-up, then cosine/linear decay or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ndcg_at_10(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    """Mean nDCG@10 (trec_eval through :mod:`lbnl.ir.metrics`) of ranked document ids per query."""
    from ..ir.metrics import mean_metrics, per_query_metrics

    return mean_metrics(per_query_metrics(qrels, rankings))["ndcg@10"]


def _use_bf16(mode: str, device: torch.device) -> bool:
    if mode == "off":
        return False
    if mode == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trainer:
    """One training run as :class:`~lbnl.train.config.TrainConfig` describes it.

    Args:
        config: the validated configuration.
        searcher_factory: builds the first-stage retriever over the corpus (BM25 by default).
    """

    def __init__(self, config: TrainConfig, *, searcher_factory: SearcherFactory = default_searcher):
        self.config = config.validate()
        run, opt = config.run, config.optim
        self.out = Path(run.output_dir or "")
        self.seed = run.seed
        random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.device = resolve_device(config.model.device)
        self.bf16 = _use_bf16(config.model.autocast, self.device)
        base = load_base(config.model.base or "", tokenizer_dir=config.model.tokenizer,
                         token_init=config.model.token_init, seed=self.seed)
        self.base = base
        kernel = resolve_attention(config.model.attention, torch.bfloat16 if self.bf16 else torch.float32, self.device)
        if kernel == "chunked":
            use_chunked_attention(base.model.backbone)
        self.tokenizer = base.tokenizer
        self.model = TrainableLBNL(
            base.model, base_vocab_size=base.base_vocab_size, finetune=config.model.finetune,
            lora_r=config.model.lora_r, lora_alpha=config.model.lora_alpha, lora_dropout=config.model.lora_dropout,
            lora_target_modules=config.model.lora_target_modules, lora_layers=config.model.lora_layers,
            train_tokens=config.model.train_tokens,
            gradient_checkpointing=config.model.gradient_checkpointing,
        ).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.data: TrainData = build_train_data(config.data, self.seed, searcher_factory)
        loss = config.loss
        self.encoder = ListEncoder(
            self.tokenizer, mode=config.mode, max_doc_tokens=config.data.max_doc_tokens,
            max_query_tokens=config.data.max_query_tokens, instruction=config.data.instruction,
            dual=loss.dual > 0, similar=loss.similar > 0, span_drop=(loss.span_drop_min, loss.span_drop_max),
            reverse=loss.order > 0,
        )
        self.sampler = ListSampler(self.data, self.encoder, negatives=config.data.negatives, seed=self.seed,
                                   negatives_min=config.data.negatives_min,
                                   size_block=config.optim.lists_per_batch, lone_split=config.data.lone_split)
        self.lists_per_step = opt.lists_per_batch * opt.grad_accum
        self.total_steps = opt.max_steps or max(1, math.ceil(opt.epochs * len(self.data.groups) / self.lists_per_step))
        groups = self.model.parameter_groups()
        wd = opt.weight_decay
        param_groups = [
            {"params": groups["backbone"], "lr": opt.lr, "weight_decay": wd},
            {"params": groups["projector"], "lr": opt.projector_lr or opt.lr, "weight_decay": wd},
            {"params": groups["tokens"], "lr": opt.token_lr or opt.lr, "weight_decay": 0.0},
        ]
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], betas=(0.9, 0.999), eps=1e-8,
                                           foreach=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, opt.warmup_steps, opt.schedule))
        self.weights = {"rank": loss.rank, "disperse": loss.disperse, "dual": loss.dual, "similar": loss.similar,
                        "calibrate": loss.calibrate, "distill": loss.distill, "order": loss.order}
        self.teacher = None
        if loss.distill:
            from .teacher import EmbeddingTeacher

            self.teacher = EmbeddingTeacher(loss.teacher or "")
        self.step = 0
        self.train_seconds = 0.0
        self.docs_seen = 0
        self.tokens_seen = 0
        self._updating = False
        self._stop_requested = False
        self._last_saved = -1
        self._first_stage: float | None = None

    # ---- one step ----------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def batch_losses(self, batch: Batch) -> L.LossOutput:
        """Forward one micro-batch and return the weighted total and each component."""
        cfg = self.config.loss
        b, n = batch.doc.shape
        with self._autocast():
            hidden = self.model.hidden_states(batch.input_ids.to(self.device))
            flat = hidden.reshape(-1, hidden.shape[-1])
            names = [k for k in ("doc", "query", "early", "augmented", "reread_doc", "reread_query")
                     if getattr(batch, k) is not None]
            index = torch.cat([getattr(batch, k).reshape(-1) for k in names]).to(self.device)
            projected = self.model.project(flat[index])
        parts = {k: v.reshape(b, n, -1).float() for k, v in zip(names, projected.split(b * n))}
        mask = batch.mask.to(self.device)
        docs = parts["doc"]
        positive = batch.positive.to(self.device) if batch.positive is not None else None
        values = {"rank": L.rank_loss(parts["query"], docs, cfg.temperature, mask, cfg.in_batch_negatives, positive)}
        if self.weights["disperse"]:
            values["disperse"] = L.dispersive_loss(docs, cfg.temperature, mask)
        if "early" in parts:
            values["dual"] = L.dual_matching_loss(parts["early"], docs, cfg.temperature, mask, positive)
        if self.weights["calibrate"]:
            values["calibrate"] = L.calibration_loss(parts["query"], docs, cfg.temperature, mask, positive)
        if "augmented" in parts:
            values["similar"] = L.similarity_loss(docs, parts["augmented"], cfg.temperature, mask)
        if "reread_doc" in parts:
            values["order"] = L.order_loss(parts["query"], docs, parts["reread_query"], parts["reread_doc"],
                                           cfg.temperature, mask)
        if self.teacher is not None:
            values["distill"] = self._distill(batch, parts["query"], docs, mask)
        return L.combine(values, self.weights)

    def _distill(self, batch: Batch, query: torch.Tensor, docs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_distill of a micro-batch; a lone split (one query, one document per prompt) is one list."""
        assert self.teacher is not None and batch.texts is not None and batch.queries is not None
        b, n = mask.shape
        teacher = torch.zeros((b, n))
        for i, (q, texts) in enumerate(zip(batch.queries, batch.texts)):
            teacher[i, : len(texts)] = self.teacher.scores(q, texts)
        positive = batch.positive if batch.positive is not None else torch.ones(b, dtype=torch.bool)
        if n == 1 and b > 1 and len(set(batch.queries)) == 1:
            query = (query if query.dim() == 3 else query.unsqueeze(1)).reshape(1, b, -1)
            docs, teacher, mask = docs.reshape(1, b, -1), teacher.reshape(1, b), mask.reshape(1, b)
            positive = positive[:1]
        cfg = self.config.loss
        lists = L.teacher_agrees(teacher, mask.cpu(), positive) if cfg.distill_gate else None
        return L.distillation_loss(query, docs, teacher, cfg.temperature, cfg.teacher_temperature, mask, lists)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (all micro-batches); returns its log record."""
        opt = self.config.optim
        start, start_cpu = time.perf_counter(), time.process_time()
        self.model.train()
        sums: dict[str, float] = {}
        total = 0.0
        docs = tokens = 0
        first = self.config.data.start_list + self.step * self.lists_per_step
        for micro in range(opt.grad_accum):
            lists = self.sampler.lists(first + micro * opt.lists_per_batch, opt.lists_per_batch)
            batch = collate(lists, self.pad_id)
            out = self.batch_losses(batch)
            (out.total / opt.grad_accum).backward()
            total += float(out.total.detach()) / opt.grad_accum
            for k, v in out.components.items():
                sums[k] = sums.get(k, 0.0) + v / opt.grad_accum
            docs += batch.docs
            tokens += batch.tokens
        norm = torch.nn.utils.clip_grad_norm_(self.params, opt.max_grad_norm or float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self._updating = True
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._updating = False
        if self._stop_requested:
            raise KeyboardInterrupt
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        self.docs_seen += docs
        self.tokens_seen += tokens
        return {"type": "train", "step": self.step, "loss": total, **sums, "lr": lr, "grad_norm": float(norm),
                "docs": docs, "tokens": tokens, "seconds": seconds, "cpu_seconds": time.process_time() - start_cpu,
                "docs_per_s": docs / seconds}

    def request_stop(self) -> None:
        """Stop the run as Ctrl-C does, but never inside the weight update (a checkpoint there would be half
        updated, so none could be saved): what ``lbnl train``'s SIGINT/SIGTERM handler calls. Outside the update
        it raises ``KeyboardInterrupt`` at once; inside, right after the update."""
        if self._updating:
            self._stop_requested = True
            return
        raise KeyboardInterrupt

    # ---- validation --------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """nDCG@10 on the held-out training queries, read as inference reads the model: inference prompts
        (no early query token), one prompt per document for a pointwise run, the fast path on a merged copy."""
        from ..reranker import Reranker

        val = self.data.validation
        if not val:
            return {}
        data = self.config.data
        qrels = {q.query_id: q.qrels for q in val}
        if self._first_stage is None:
            self._first_stage = ndcg_at_10({q.query_id: list(q.candidates) for q in val}, qrels)
        start = time.perf_counter()
        model = self.model.inference_copy(torch.bfloat16 if self.bf16 else None)
        reranker = Reranker(model, self.tokenizer, pointwise=self.config.mode == "pointwise")
        results = reranker.rerank_many(
            [q.query for q in val], [[self.data.docs[d] for d in q.candidates] for q in val],
            max_query_length=data.max_query_tokens, max_doc_length=data.max_doc_tokens,
            instruction=data.instruction)
        ranked = {q.query_id: [q.candidates[r.index] for r in res] for q, res in zip(val, results)}
        del model, reranker, results
        release_memory()
        return {"type": "validation", "step": self.step, "ndcg@10": ndcg_at_10(ranked, qrels),
                "first_stage_ndcg@10": self._first_stage, "queries": len(val),
                "seconds": time.perf_counter() - start}

    # ---- checkpoints -------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        root = self.out / CHECKPOINTS
        return sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file()) if root.is_dir() else []

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint of the current step (atomically) and drop the oldest beyond the limit."""
        from safetensors.torch import save_file

        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:08d}"
        tmp = root / f".tmp-step-{self.step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.contiguous().cpu() for k, v in self.model.trainable_state().items()},
                  str(tmp / "trainable.safetensors"))
        state = {
            "step": self.step,
            "lists_seen": self.step * self.lists_per_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "train_seconds": self.train_seconds,
            "docs_seen": self.docs_seen,
            "tokens_seen": self.tokens_seen,
        }
        torch.save(state, tmp / "state.pt")
        _fsync_dir_files(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _fsync(root)
        for old in self.checkpoints()[: -self.config.run.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        self._last_saved = self.step
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote."""
        from safetensors.torch import load_file

        if not (path / "state.pt").is_file() or not (path / "trainable.safetensors").is_file():
            raise InvalidInputError(f"{path} is not a training checkpoint (state.pt and trainable.safetensors)")
        self.model.load_trainable_state({k: v.to(self.device) for k, v in
                                         load_file(str(path / "trainable.safetensors")).items()})
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.docs_seen = int(state["docs_seen"])
        self.tokens_seen = int(state["tokens_seen"])
        self._last_saved = self.step

    def _restore(self, found: list[Path]) -> Path:
        """Load the newest checkpoint that loads; a damaged one (a crash while the disk was full, a torn
        copy) is skipped with a warning and the one before it is used."""
        for path in reversed(found):
            try:
                self.load_checkpoint(path)
                return path
            except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
                logger.warning("checkpoint %s cannot be loaded (%s: %s); trying the one before it",
                               path, type(exc).__name__, exc)
        raise InvalidInputError(f"no checkpoint in {self.out / CHECKPOINTS} can be loaded; remove them to start over")

    def _resume_point(self) -> Path | None:
        resume = self.config.run.resume
        if isinstance(resume, str):
            path = Path(resume)
            if not path.is_dir():
                raise InvalidInputError(f"run.resume: no checkpoint directory at {path}")
            return path
        found = self.checkpoints()
        if found and not resume:
            raise InvalidInputError(f"{self.out} already holds checkpoints; set run.resume=true to continue "
                                    "that run or choose another run.output_dir")
        return found[-1] if found else None

    def _check_config(self) -> None:
        import yaml

        path = self.out / "config.yaml"
        if path.exists():
            before = _flat(yaml.safe_load(path.read_text()) or {})
            now = _flat(to_dict(self.config))
            changed = sorted(k for k in now if k not in _RESUME_SAFE and before.get(k) != now[k])
            if changed:
                logger.warning("resuming with a changed config (%s); results will differ from an uninterrupted run",
                               ", ".join(changed))
        path.write_text(render_yaml(self.config))

    # ---- logging and outputs -----------------------------------------------------------------

    def _read_log(self) -> list[dict[str, Any]]:
        path = self.out / LOG_FILE
        return read_log(path) if path.exists() else []

    def _truncate_log(self) -> None:
        """Drop log records past the resumed step (written after the checkpoint, before the stop)."""
        kept = [r for r in self._read_log() if r["step"] <= self.step]
        (self.out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _adapter_base(self) -> str:
        if self.config.run.adapter_base:
            return self.config.run.adapter_base
        given = Path(self.config.model.base or "").expanduser()
        return str(self.base.path) if given.is_dir() else str(self.config.model.base)

    def _finish(self, history: list[dict[str, Any]]) -> TrainResult:
        run = self.config.run
        adapter_dir = model_dir = None
        if run.save_adapter and self.config.model.finetune == "lora":
            dtype = _DTYPES[run.adapter_dtype]
            self.model.round_lora(dtype)
            adapter_dir = self.model.save_adapter(
                self.out / "adapter", base=self._adapter_base(), tokenizer=self.tokenizer, base_path=self.base.path,
                lora_dtype=dtype,
                extra={"trained_steps": self.step, "mode": self.config.mode})
        merged = self.model.merged()
        if run.save_full:
            if run.save_dtype:
                merged.to(_DTYPES[run.save_dtype])
            model_dir = self.out / "model"
            save_official(merged, model_dir, self.tokenizer, {"mode": "pointwise"} if self.config.mode == "pointwise" else None)
        summary = self._summary(history)
        (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        plot_log(self.out / LOG_FILE, self.out / PLOT_FILE)
        return TrainResult(self.out, self.step, True, history, model_dir, adapter_dir, summary)

    def _summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        vals = [r for r in history if r["type"] == "validation"]
        trains = [r for r in history if r["type"] == "train"]
        secs = max(self.train_seconds, 1e-9)
        return {
            "steps": self.step,
            "lists": self.step * self.lists_per_step,
            "mode": self.config.mode,
            "data": self.data.description,
            "bf16_autocast": self.bf16,
            "device": str(self.device),
            "trainable_parameters": sum(p.numel() for p in self.params),
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in trains),
            "torch_threads": torch.get_num_threads(),
            "steps_per_s": self.step / secs if trains else None,
            "docs_per_s": self.docs_seen / secs,
            "tokens_per_s": self.tokens_seen / secs,
            "first_loss": trains[0]["loss"] if trains else None,
            "last_loss": trains[-1]["loss"] if trains else None,
            "validation": [{"step": r["step"], "ndcg@10": r["ndcg@10"]} for r in vals],
            "first_stage_ndcg@10": vals[-1]["first_stage_ndcg@10"] if vals else None,
        }

    # ---- the run -----------------------------------------------------------------------------

    def run(self, callbacks: Sequence[StepCallback] = ()) -> TrainResult:
        """Train to ``total_steps`` (resuming when a checkpoint exists) and write the outputs."""
        from tqdm.auto import tqdm

        run = self.config.run
        self.out.mkdir(parents=True, exist_ok=True)
        point = self._resume_point()
        self._check_config()
        if self.data.validation:
            (self.out / VALIDATION_FILE).write_text("".join(f"{v.query_id}\n" for v in self.data.validation))
        if point is not None:
            point = self._restore([point] if isinstance(self.config.run.resume, str) else self.checkpoints())
            logger.info("resumed from %s at step %d", point, self.step)
        self._truncate_log()
        history = self._read_log()
        if self.step == 0 and run.eval_at_start and self.data.validation:
            record = self.validate()
            self._log(record)
            history.append(record)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not run.progress,
                   dynamic_ncols=True)
        try:
            while self.step < self.total_steps:
                record = self.train_step()
                if self.step % run.log_every == 0 or self.step == self.total_steps:
                    self._log(record)
                    history.append(record)
                post = {k: f"{record[k]:.3f}" for k in COMPONENTS if k in record}
                post["docs/s"] = f"{record['docs_per_s']:.1f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                last = self.step == self.total_steps
                if (run.eval_every and self.step % run.eval_every == 0) or last:
                    val = self.validate()
                    if val:
                        self._log(val)
                        history.append(val)
                        bar.write(f"step {self.step}: validation nDCG@10 {val['ndcg@10']:.4f} "
                                  f"(candidates in first-stage order: {val['first_stage_ndcg@10']:.4f})",
                                  file=sys.stderr)
                if (run.save_every and self.step % run.save_every == 0) or last:
                    self.save_checkpoint()
                    plot_log(self.out / LOG_FILE, self.out / PLOT_FILE)
                    release_memory()
                for callback in callbacks:
                    callback(self.step, record)
        except KeyboardInterrupt:
            if not self._updating and self.step > self._last_saved:
                self.save_checkpoint()
            bar.close()
            logger.warning("interrupted at step %d; run the same command again to resume", self.step)
            raise
        bar.close()
        return self._finish(history)


def train(config: TrainConfig, *, callbacks: Sequence[StepCallback] = (),
          searcher_factory: SearcherFactory = default_searcher) -> TrainResult:
    """Run (or resume) the training that ``config`` describes; see :class:`Trainer`."""
    return Trainer(config, searcher_factory=searcher_factory).run(callbacks)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a training log; a line a crash left half-written (only ever the last) is skipped."""
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s, line %d: a torn record (an interrupted write) is skipped", path, n)
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def _fsync(path: Path) -> None:
    """Flush a file's or directory's metadata to disk (best effort where the OS does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir_files(directory: Path) -> None:
    for f in directory.iterdir():
        _fsync(f)
    _fsync(directory)


def plot_log(log_path: Path, png_path: Path) -> Path | None:
    """Loss components per step and validation nDCG@10 (right axis) as a PNG."""
    if not log_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    trains = [r for r in records if r["type"] == "train"]
    vals = [r for r in records if r["type"] == "validation"]
    if not trains and not vals:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [r["step"] for r in trains]
    window = max(1, len(trains) // 50)
    for key in COMPONENTS:
        ys = [r[key] for r in trains if key in r]
        if len(ys) == len(steps) and ys:
            smooth = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1])
                      for i in range(len(ys))]
            ax.plot(steps, smooth, label=key, linewidth=2 if key == "loss" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if vals:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in vals], [r["ndcg@10"] for r in vals], "k--o", markersize=3,
                 label="validation nDCG@10")
        ax2.axhline(vals[-1]["first_stage_ndcg@10"], color="grey", linestyle=":", label="first-stage order nDCG@10")
        ax2.set_ylabel("nDCG@10")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title("lbnl train")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
