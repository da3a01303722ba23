"""Training configuration: typed, documented sections read from YAML, with ``section.key=value`` overrides.

Every key carries its documentation in the dataclass field (``help``); :func:`render_yaml` writes
a commented reference file from it, so the docs cannot drift from the code. No torch import here:
``lbnl --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import InvalidInputError

MODES = ("listwise", "pointwise")
SOURCES = ("beir", "jsonl", "self_supervised")
NEGATIVE_SOURCES = ("bm25", "random")
SCHEDULES = ("cosine", "linear", "constant")
AUTOCAST = ("auto", "bf16", "off")
TOKEN_INITS = ("mean", "related")
ATTENTION = ("auto", "sdpa", "chunked")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """What is trained and how."""

    base: str | None = _f(None, "Starting point: an LBNL checkpoint directory, an lbnl adapter directory, or a "
                                "plain causal LM directory (the two special tokens and a random projector are "
                                "added). Required.")
    tokenizer: str | None = _f(None, "Tokenizer directory when the base has none (default: the base's).")
    finetune: str = _f("lora", "lora: LoRA on the backbone, projector and special-token rows trained fully; "
                               "full: every weight trained.", ("lora", "full"))
    lora_r: int = _f(16, "LoRA rank r of the low-rank update of each adapted layer.")
    lora_alpha: float = _f(32, "LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input.")
    lora_target_modules: Union[str, list[str]] = _f(
        "all-linear", "Modules that get LoRA: 'all-linear' (every attention and MLP projection of the decoder) "
                      "or a list of module names such as [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj].")
    lora_layers: int | None = _f(None, "Adapt only the last N decoder layers (null: all). With train_tokens false "
                                       "the layers below get no gradient and the backward pass stops at the lowest "
                                       "adapted layer: much cheaper steps on a CPU.")
    train_tokens: bool = _f(True, "Train the special-token embedding rows (false: they keep their initial value, "
                                  "and no gradient has to reach the embeddings).")
    token_init: str = _f("mean", "Initial embedding of special tokens the base lacks: mean (mean of all token "
                                 "embeddings) or related (mean of the embeddings of the words 'passage' and "
                                 "'query' respectively).", TOKEN_INITS)
    autocast: str = _f("auto", "bf16 autocast: auto (on CUDA with bf16 and on CPUs with AMX/AVX512-BF16), bf16 "
                               "(always), off (float32). Weights stay float32.", AUTOCAST)
    attention: str = _f("auto", "Attention kernel of the training forward: auto (chunked bf16 matmuls under bf16 autocast "
                                "on CPUs with AVX512-BF16 but no AMX, where torch's flash kernel runs bf16 at float32 "
                                "speed; SDPA elsewhere), sdpa, or chunked.", ATTENTION)
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory, ~30% slower).")
    device: str | None = _f(None, "cpu, cuda, cuda:1 ... (default: CUDA when available).")


@dataclass
class DataConfig:
    """Where the training lists come from."""

    source: str = _f("beir", "beir: a BEIR dataset directory (queries, corpus, qrels/<split>.tsv); jsonl: groups "
                             "{query, positive, negatives}; self_supervised: title -> text pairs of a BEIR corpus.",
                     SOURCES)
    path: str | None = _f(None, "The BEIR dataset directory (beir, self_supervised) or the JSONL file (jsonl). Required.")
    split: str = _f("train", "BEIR qrels split to train on; the test split is refused.")
    negatives: int = _f(15, "Negatives per list (the positive makes it negatives + 1 documents); a list whose "
                            "own negatives are fewer is filled up with random documents of the corpus.")
    negatives_min: int | None = _f(None, "List-size augmentation: when set, the lists of a micro-batch hold n documents, "
                                         "n drawn log-uniformly from negatives_min + 1 .. negatives + 1 (seeded per "
                                         "micro-batch; small lists are frequent and cheap, every size occurs; 0: "
                                         "lone documents, scored against in-batch negatives only). null: always "
                                         "negatives + 1.")
    lone_split: float = _f(0.0, "Share of micro-batches (seeded per micro-batch) that hold one query's positive and "
                                "lists_per_batch - 1 of its negatives each alone in its own prompt; with "
                                "loss.calibrate (or in-batch negatives) they teach a lone relevant document to "
                                "score above a lone hard negative. 0: never.")
    negative_source: str = _f("bm25", "How negatives are mined for beir and self_supervised: bm25 (hard, from the "
                                      "BM25 first stage, never a judged positive) or random.", NEGATIVE_SOURCES)
    negative_pool: int = _f(50, "Negatives of a list are drawn from the top negative_pool BM25 hits (use the "
                                "value of negatives for a fixed top-k).")
    max_doc_tokens: int = _f(768, "Tokens kept per document (same truncation as inference).")
    max_query_tokens: int = _f(512, "Tokens kept of the query (same truncation as inference).")
    instruction: str | None = _f(None, "Optional instruction placed in every prompt.")
    max_groups: int | None = _f(None, "Use at most this many training lists (small runs).")
    start_list: int = _f(0, "Position in the list stream where step 1 starts. A second stage that continues "
                            "from an earlier run's adapter sets it to that run's steps x lists per step, so it "
                            "sees new lists and negatives instead of replaying the first stage's.")
    validation_queries: int = _f(50, "Training queries held out for validation (never trained on).")
    validation_depth: int = _f(30, "Validation reranks the top validation_depth BM25 hits of each held-out query "
                                    "(beir; for jsonl and self_supervised the held-out list itself).")


@dataclass
class LossConfig:
    """The LBNL objectives (spec section 6)."""

    temperature: float = _f(0.25, "tau for every objective (0.25 first stage, 0.05 for hard-negative stages).")
    rank: float = _f(1.0, "Weight of L_rank (InfoNCE of the final query embedding).")
    disperse: float = _f(0.45, "Weight of L_disperse (documents of a list spread apart).")
    dual: float = _f(0.85, "Weight of L_dual (InfoNCE of an extra query token placed right after the request "
                           "line's query; training prompts only). 0 drops the extra token.")
    similar: float = _f(0.85, "Weight of L_similar (each document against its augmented copy, read in a second, "
                              "shuffled prompt). 0 skips the second prompt.")
    calibrate: float = _f(0.0, "Weight of L_calibrate (lbnl's addition, not in the paper): every positive, scored "
                               "in its own prompt, above every negative of the micro-batch scored in its own "
                               "prompt, so that scores compare across requests (thresholds, lone documents). "
                               "Pairs well with data.lone_split.")
    distill: float = _f(0.0, "Weight of L_distill (lbnl's addition): KL divergence from a teacher's score "
                             "distribution over each list to the student's; lone-split micro-batches are one "
                             "list across prompts. Needs loss.teacher.")
    order: float = _f(0.0, "Weight of L_order (lbnl's addition): symmetric KL divergence between a list's score "
                           "distributions read in its order and in reverse order (one more prompt per list), so "
                           "that the order of the documents does not decide a ranking. Listwise only.")
    teacher: str | None = _f(None, "Directory of the sentence-embedding model L_distill follows (cosine of mean-pooled "
                                   "embeddings; e.g. all-MiniLM-L6-v2 from: python scripts/teacher.py fetch). "
                                   "Training-time only.")
    teacher_temperature: float = _f(0.05, "Temperature of the teacher's cosines in L_distill.")
    distill_gate: bool = _f(False, "Distil only the lists whose labelled positive the teacher itself scores above "
                                   "every other document of the list, so that its mistakes are not taught.")
    in_batch_negatives: bool = _f(False, "Documents of the other lists in a micro-batch become extra negatives of L_rank.")
    span_drop_min: float = _f(0.10, "Augmentation for L_similar: smallest fraction of a document's tokens dropped "
                                    "as one contiguous span.")
    span_drop_max: float = _f(0.20, "Augmentation for L_similar: largest fraction of a document's tokens dropped.")


@dataclass
class OptimConfig:
    """Optimiser, schedule and batch shape."""

    lr: float = _f(5e-5, "Peak learning rate of the LoRA (or full) weights.")
    projector_lr: float | None = _f(None, "Learning rate of the projector (default: lr).")
    token_lr: float | None = _f(None, "Learning rate of the special-token embedding rows (default: lr).")
    weight_decay: float = _f(0.0, "AdamW weight decay (never applied to the special-token rows).")
    warmup_steps: int = _f(0, "Optimizer steps of linear learning-rate warm-up from 0 to lr.")
    schedule: str = _f("cosine", "Decay after warm-up, down to 0 at max_steps.", SCHEDULES)
    max_steps: int | None = _f(None, "Optimizer steps; default: epochs over the training lists.")
    epochs: float = _f(1.0, "Passes over the training lists when max_steps is not set.")
    lists_per_batch: int = _f(4, "Lists per forward (micro-batch); in-batch negatives come from these.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (lists per step = lists_per_batch * grad_accum).")
    max_grad_norm: float | None = _f(1.0, "Gradient clipping norm (null: no clipping).")


@dataclass
class RunConfig:
    """Outputs, checkpoints, validation, logging."""

    output_dir: str | None = _f(None, "Directory of the run: checkpoints/, model/ (official layout, LoRA merged), "
                                      "adapter/, train_log.jsonl, loss_curve.png. Required.")
    seed: int = _f(0, "Seeds data order, negatives, shuffles, augmentation and initialisation.")
    save_every: int = _f(100, "Save a resumable checkpoint every N optimizer steps (0: only at the end).")
    keep_checkpoints: int = _f(2, "Resumable checkpoints kept (oldest removed).")
    resume: Union[bool, str] = _f(True, "true: continue from the newest checkpoint in output_dir when there is one; "
                                        "false: refuse to reuse a directory that holds checkpoints; or a checkpoint path.")
    eval_every: int = _f(100, "Validation nDCG@10 every N optimizer steps (0: only at the end).")
    eval_at_start: bool = _f(True, "Also validate before the first step (the baseline).")
    log_every: int = _f(1, "Write a log line every N optimizer steps.")
    save_full: bool = _f(True, "Write model/ in the official layout (LoRA merged) at the end.")
    save_adapter: bool = _f(True, "Write adapter/ (LoRA + projector + special-token rows + tokenizer; LoRA runs only).")
    adapter_base: str | None = _f(None, "Base reference written into the adapter (a built-in base name or a path; "
                                        "default: model.base as an absolute path).")
    save_dtype: str | None = _f(None, "dtype of model/ weights: float32, bfloat16 (default: float32).")
    adapter_dtype: str = _f("float32", "dtype of the stored LoRA factors: float32, or bfloat16 to halve the "
                                       "adapter (model/ is then merged from the same rounded factors).",
                            ("float32", "bfloat16"))
    progress: bool = _f(True, "Show a tqdm progress bar with the loss components and docs/s.")


@dataclass
class TrainConfig:
    """A training run."""

    mode: str = _f("listwise", "listwise: all documents of a list in one prompt; pointwise: one document per "
                               "prompt, InfoNCE across the list's prompts (same loop, same losses).", MODES)
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": ModelConfig.__doc__})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": DataConfig.__doc__})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": LossConfig.__doc__})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": OptimConfig.__doc__})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": RunConfig.__doc__})

    def validate(self) -> "TrainConfig":
        """Check values that types alone cannot; raise :class:`InvalidInputError` naming the key."""
        if not self.model.base:
            raise InvalidInputError("model.base is required (a checkpoint, adapter or causal LM directory)")
        if not self.data.path:
            raise InvalidInputError("data.path is required")
        if not self.run.output_dir:
            raise InvalidInputError("run.output_dir is required")
        if self.data.source in ("beir", "self_supervised") and self.data.split == "test":
            raise InvalidInputError("data.split: training on the test split is refused")
        positive = {"data.negatives": self.data.negatives, "data.max_doc_tokens": self.data.max_doc_tokens,
                    "data.max_query_tokens": self.data.max_query_tokens, "model.lora_r": self.model.lora_r,
                    "optim.lists_per_batch": self.optim.lists_per_batch, "optim.grad_accum": self.optim.grad_accum,
                    "loss.temperature": self.loss.temperature, "run.keep_checkpoints": self.run.keep_checkpoints,
                    "run.log_every": self.run.log_every, "data.negative_pool": self.data.negative_pool}
        for key, value in positive.items():
            if value <= 0:
                raise InvalidInputError(f"{key} must be positive, got {value}")
        if self.optim.max_steps is not None and self.optim.max_steps <= 0:
            raise InvalidInputError("optim.max_steps must be positive")
        if not 0 <= self.loss.span_drop_min <= self.loss.span_drop_max < 1:
            raise InvalidInputError("need 0 <= loss.span_drop_min <= loss.span_drop_max < 1")
        weights = (self.loss.rank, self.loss.disperse, self.loss.dual, self.loss.similar, self.loss.calibrate,
                   self.loss.distill, self.loss.order)
        if min(weights) < 0:
            raise InvalidInputError("loss weights must be >= 0")
        if max(weights) == 0:
            raise InvalidInputError("every loss weight is 0")
        if self.loss.distill and not self.loss.teacher:
            raise InvalidInputError("loss.distill needs loss.teacher (a sentence-embedding model directory)")
        if self.loss.order and self.mode != "listwise":
            raise InvalidInputError("loss.order needs mode: listwise (a pointwise prompt holds one document)")
        if self.loss.teacher_temperature <= 0:
            raise InvalidInputError("loss.teacher_temperature must be positive")
        if not 0 <= self.data.lone_split <= 1:
            raise InvalidInputError("data.lone_split must be between 0 and 1")
        if self.data.lone_split and self.optim.lists_per_batch < 2:
            raise InvalidInputError("data.lone_split needs optim.lists_per_batch >= 2 (a positive and a negative)")
        if self.data.negatives_min is not None and not 0 <= self.data.negatives_min <= self.data.negatives:
            raise InvalidInputError("data.negatives_min must be between 0 and data.negatives")
        if self.data.start_list < 0:
            raise InvalidInputError("data.start_list must be >= 0")
        if self.data.validation_queries < 0 or self.run.save_every < 0 or self.run.eval_every < 0:
            raise InvalidInputError("data.validation_queries, run.save_every and run.eval_every must be >= 0")
        if self.run.save_dtype not in (None, "float32", "bfloat16"):
            raise InvalidInputError("run.save_dtype must be float32 or bfloat16")
        return self


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


#: Section name -> its dataclass.
SECTIONS: dict[str, type] = {
    name: hint for name, hint in _hints(TrainConfig).items() if dataclasses.is_dataclass(hint)
}


def _coerce(key: str, value: Any, hint: Any, choices: tuple[str, ...] | None) -> Any:
    """Convert ``value`` to ``hint`` (int, float, bool, str, their lists, Optional/Union of them) or fail clearly."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is str):
            try:
                return _coerce(key, value, option, choices)
            except InvalidInputError as exc:
                errors.append(str(exc))
        raise InvalidInputError(errors[-1] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise InvalidInputError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, item, None) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise InvalidInputError(f"{key}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise InvalidInputError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value) if hint is float else value if isinstance(value, int) else int(str(value))
        except (TypeError, ValueError):
            raise InvalidInputError(f"{key}: expected {'a number' if hint is float else 'an integer'}, "
                                    f"got {value!r}") from None
        return number
    if hint is str:
        if isinstance(value, bool) and choices and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML reads a bare off / on as a boolean
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InvalidInputError(f"{key}: expected a string, got {value!r}")
        value = str(value)
        if choices and value not in choices:
            raise InvalidInputError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value
    raise InvalidInputError(f"{key}: unsupported type {hint}")


def _unknown(key: str, known: list[str]) -> InvalidInputError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidInputError(f"unknown config key {key!r}{hint}")


def _apply(config: TrainConfig, section: str | None, key: str, value: Any) -> None:
    if section is None:
        if key in SECTIONS:
            raise InvalidInputError(f"{key} is a section; set {key}.<key>")
        target: Any = config
    else:
        if section not in SECTIONS:
            raise _unknown(section, list(SECTIONS))
        target = getattr(config, section)
    fields = {f.name: f for f in dataclasses.fields(target)}
    dotted = f"{section}.{key}" if section else key
    if key not in fields or key in SECTIONS:
        raise _unknown(dotted, [k for k in fields if k not in SECTIONS])
    f = fields[key]
    setattr(target, key, _coerce(dotted, value, _hints(type(target))[key], f.metadata.get("choices")))


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from nested sections; unknown keys and bad values raise :class:`InvalidInputError`."""
    config = TrainConfig()
    if not isinstance(data, dict):
        raise InvalidInputError("a training config must be a mapping of sections")
    for name, value in data.items():
        if name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise InvalidInputError(f"{name} must be a mapping of keys")
            for key, item in value.items():
                _apply(config, name, str(key), item)
        else:
            _apply(config, None, str(name), value)
    return config


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars or flow lists)."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise InvalidInputError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        section, _, name = key.strip().rpartition(".")
        _apply(config, section or None, name, value)
    return config


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or start from defaults when ``path`` is None), apply overrides, validate."""
    import yaml

    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"no config file at {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{path} is not valid YAML: {exc}") from None
    config = from_dict(data)
    apply_overrides(config, overrides or [])
    return config.validate()


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width - len(indent) - 2, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ")


def render_yaml(config: TrainConfig | None = None) -> str:
    """The config as YAML with every key's documentation (and its choices) as comments above it."""
    config = config or TrainConfig()
    lines = ["# lbnl train: every key, its default and what it does.",
             "# Use: lbnl train --config FILE.yaml [--set section.key=value ...]", ""]

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            doc = f.metadata.get("help") or ""
            if f.metadata.get("choices"):
                doc += f" One of: {', '.join(f.metadata['choices'])}."
            lines.extend(_wrap(doc, indent))
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                emit(value, indent + "  ")
                lines.append("")
            else:
                lines.append(f"{indent}{f.name}: {_scalar(value)}")

    emit(config, "")
    return "\n".join(lines).rstrip() + "\n"


def documented_keys() -> dict[str, str]:
    """Every ``section.key`` with its documentation."""
    keys = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            for g in dataclasses.fields(SECTIONS[f.name]):
                keys[f"{f.name}.{g.name}"] = g.metadata.get("help", "")
        else:
            keys[f.name] = f.metadata.get("help", "")
    return keys
