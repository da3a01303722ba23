"""``lbnl train``: run or resume a training run from a YAML config with ``section.key=value`` overrides."""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any



def _run(args: argparse.Namespace) -> int:
    from ..train.config import TrainConfig, documented_keys, load_config, render_yaml

    if args.print_defaults:
        print(render_yaml(TrainConfig()), end="")
        return 0
    if args.list_keys:
        for key, doc in documented_keys().items():
            print(f"{key}\n    {doc}")
        return 0
    overrides = list(args.set or [])
    for flag, key in (("output_dir", "run.output_dir"), ("max_steps", "optim.max_steps"), ("base", "model.base"),
                      ("device", "model.device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.no_progress:
        overrides.append("run.progress=false")
    config = load_config(args.config, overrides)
    if args.dry_run:
        print(render_yaml(config), end="")
        return 0
    from ..hardware import tune_allocator
    from ..train.loop import Trainer

    tune_allocator()
    trainer = Trainer(config)

    def stop(signum: int, frame: Any) -> None:
        trainer.request_stop()

    # Ctrl-C and a scheduler's kill both checkpoint the last whole step (deferred past a weight update).
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = trainer.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    summary = {k: result.summary.get(k) for k in ("steps", "last_loss", "steps_per_s", "docs_per_s", "validation")}
    summary.update(model=str(result.model_dir) if result.model_dir else None,
                   adapter=str(result.adapter_dir) if result.adapter_dir else None)
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train an LBNL reranker (LoRA or full) from a YAML config",
        description="Train an LBNL reranker with the four LBNL objectives. Every config key is documented: "
                    "see `lbnl train --print-defaults` or configs/reference.yaml. Rerunning the same command "
                    "resumes from the newest checkpoint in run.output_dir.")
    p.add_argument("--config", "-c", default=None, help="YAML config file (sections: mode, model, data, loss, optim, run)")
    p.add_argument("--set", "-s", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set optim.lr=1e-4 --set mode=pointwise (repeatable)")
    p.add_argument("--output-dir", default=None, help="shortcut for --set run.output_dir=...")
    p.add_argument("--max-steps", type=int, default=None, help="shortcut for --set optim.max_steps=...")
    p.add_argument("--base", default=None, help="shortcut for --set model.base=...")
    p.add_argument("--device", default=None, help="shortcut for --set model.device=...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--print-defaults", action="store_true", help="print every key with its default and documentation")
    p.add_argument("--list-keys", action="store_true", help="list every config key with its documentation")
    p.set_defaults(func=_run, extra="train", needs=("peft", "yaml", "pytrec_eval", "bm25s", "Stemmer"))
