"""Command line: `sftrl train | eval | sandbox prepare`.

    sftrl train                                   # the default method on the built-in sandbox
    sftrl train --config recipes/sandbox-grpo.yaml max_steps=50 learning_rate=5e-4
    sftrl train --help-config                     # every config field with its help text
    sftrl eval --model runs/sft-then-grpo-seed0/model --data sandbox:test
    sftrl sandbox prepare [--force]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path


def _quiet_libraries() -> None:
    # Keep the progress bar readable: transformers' and datasets' info chatter goes to warnings only.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def cmd_train(args: argparse.Namespace) -> int:
    from .config import field_help, load_config

    if args.help_config:
        from .config import Config

        defaults = Config().to_dict()
        for name, text in field_help().items():
            print(f"{name} = {json.dumps(defaults[name])}\n{textwrap.indent(textwrap.fill(text, 96), '    ')}")
        return 0
    config = load_config(args.config, args.overrides)
    from .trainer import train

    train(config)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_examples
    from .evaluate import evaluate_accuracy
    from .models import load_model, load_tokenizer, resolve_model_path
    from .rewards import load_rewards

    examples = load_examples(args.data, args.split, prompt_field=args.prompt_field, answer_field=args.answer_field,
                             require_demo=False, limit=args.limit)
    is_sandbox = args.data.split(":")[0] == "sandbox"
    reward = args.reward or ("sandbox" if is_sandbox else "math")
    reward_fns = load_rewards([reward])
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, args.dtype)
    if args.device:
        model.to(args.device)
    from tqdm.auto import tqdm

    with tqdm(total=len(examples), desc="eval", unit="prompt") as bar:
        result = evaluate_accuracy(model, tokenizer, examples, reward_fns, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, temperature=args.temperature, progress=bar)
    print(f"{args.model} on {args.data}: accuracy {result['accuracy']:.1%} over {len(examples)} prompts "
          f"(mean length {result['mean_length']:.1f} tokens, truncated {result['truncated']:.1%})")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": args.model, "data": args.data, "split": args.split, "reward": reward,
                  "n": len(examples), **{k: v for k, v in result.items() if k != "completions"},
                  "samples": [{"prompt": e.prompt, "answer": e.answer, "completion": c}
                              for e, c in zip(examples, result["completions"])]}
        out.write_text(json.dumps(record, indent=2))
        print(f"wrote {out}")
    return 0


def cmd_sandbox_prepare(args: argparse.Namespace) -> int:
    from .sandbox import prepare_base_model

    path = prepare_base_model(cache_dir=args.cache_dir, force=args.force)
    info = path / "sandbox.json"
    if info.exists():
        print(info.read_text())
    print(f"sandbox base model: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftrl", description="SFT + GRPO post-training for reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: the sandbox)",
                           description="Train with a recipe and key=value overrides; no arguments trains the sandbox.")
    train.add_argument("--config", "-c", help="recipe YAML (a mapping of config fields)")
    train.add_argument("--help-config", action="store_true", help="list every config field and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_steps=50")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="accuracy of a model on a dataset split")
    ev.add_argument("--model", required=True, help="hub id, local directory, or 'sandbox'")
    ev.add_argument("--data", default="sandbox:test", help="sandbox:test, sandbox:ood, a file, a directory or a hub id")
    ev.add_argument("--split", default="test")
    ev.add_argument("--limit", type=int, default=None, help="first N rows only")
    ev.add_argument("--reward", default=None, help="grader: math, choice, sandbox or module:function (default: by data)")
    ev.add_argument("--prompt-field", default="prompt")
    ev.add_argument("--answer-field", default="answer")
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--device", default=None, help="e.g. cuda; default: CPU")
    ev.add_argument("--output", "-o", default=None, help="write results and completions to this JSON file")
    ev.set_defaults(func=cmd_eval)

    sandbox = sub.add_parser("sandbox", help="the built-in sandbox task")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    prep = sandbox_sub.add_parser("prepare", help="make (or find cached) the sandbox base model")
    prep.add_argument("--force", action="store_true", help="retrain even if cached")
    prep.add_argument("--cache-dir", default=None, help="default: $SFTRL_CACHE/sandbox or ~/.cache/sftrl/sandbox")
    prep.set_defaults(func=cmd_sandbox_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from .config import ConfigError
    from .data import DataError
    from .rewards import RewardError

    try:
        return args.func(args)
    except (ConfigError, DataError, RewardError, FileNotFoundError, FileExistsError) as exc:
        print(f"sftrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
