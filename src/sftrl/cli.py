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


def _dataset_name(spec: str) -> str:
    """A short name for a --data entry: 'sandbox:test' as is, a file or directory by its stem."""
    return spec if ":" in spec and not Path(spec).exists() else Path(spec.rstrip("/")).stem or spec


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text.strip("./")).strip("-") or "model"


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import load_examples
    from .evaluate import VLLMSampler, build_questions, format_summary, run_benchmark, sample_with_generate, summarize
    from .config import ConfigError
    from .models import load_model, load_tokenizer, resolve_model_path

    if args.temperature == 0.0 and args.k > 1:
        raise ConfigError("--temperature 0 (greedy) gives k identical samples; use --k 1 or a temperature > 0")
    k_by_source = dict(PAPER_K) if args.paper_protocol else {}
    for item in args.k_for:
        name, _, value = item.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--k-for takes SOURCE=K with K >= 1, got {item!r}")
        k_by_source[name] = int(value)
    questions = []
    for spec in args.data:
        examples = load_examples(spec, args.split, prompt_field=args.prompt_field, answer_field=args.answer_field,
                                 require_demo=False, limit=args.limit)
        questions += build_questions(examples, _dataset_name(spec), args.k, k_by_source, args.reward,
                                     args.shuffle_choices, args.seed)
    path = resolve_model_path(args.model)
    out_dir = Path(args.output_dir or Path("runs/eval") / _slug(args.model))
    samples_path = out_dir / "samples.jsonl"
    if args.overwrite and samples_path.exists():
        samples_path.unlink()
    settings = {"model": args.model, "k": args.k, "k_by_source": k_by_source, "temperature": args.temperature,
                "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "shuffle_choices": args.shuffle_choices,
                "seed": args.seed}
    tokenizer = load_tokenizer(path)
    if args.backend == "vllm":
        sampler, model = VLLMSampler(path, dtype=args.dtype), None
    else:
        sampler, model = sample_with_generate, load_model(path, args.dtype)
        if args.device:
            model.to(args.device)
    with tqdm(total=len(questions), desc="eval", unit="question", dynamic_ncols=True) as bar:
        records = run_benchmark(model, tokenizer, questions, samples_path, settings,
                                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                batch_size=args.batch_size, seed=args.seed, sampler=sampler, progress=bar)
    summary = summarize(records)
    print(f"{args.model} (temperature {args.temperature}, top_p {args.top_p})")
    print(format_summary(summary))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps({"settings": settings, "data": args.data, **summary}, indent=2))
    print(f"wrote {summary_path} and {samples_path}")
    return 0


PAPER_K = {"aime24": 32, "aime25": 32, "amc": 32}
"""The papers' protocol: AIME and AMC as avg@32, everything else from one sample (pass@1)."""


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

    ev = sub.add_parser("eval", help="avg@k / pass@k of a model on benchmarks, per data_source",
                        description="Sample k completions per question, grade them, and report avg@k and pass@k "
                                    "per data_source and overall. Samples are written as they are graded; running "
                                    "the same command again resumes.")
    ev.add_argument("--model", required=True, help="hub id, local directory, or 'sandbox'")
    ev.add_argument("--data", nargs="+", default=["sandbox:test"],
                    help="one or more datasets: sandbox:test, sandbox:ood, a verl parquet/JSONL file, a directory or a hub id")
    ev.add_argument("--split", default="test", help="split of hub datasets and directories")
    ev.add_argument("--limit", type=int, default=None, help="first N rows of each dataset only")
    ev.add_argument("--k", type=int, default=1, help="samples per question (avg@k, pass@1..k)")
    ev.add_argument("--k-for", action="append", default=[], metavar="SOURCE=K",
                    help="k for one data_source, e.g. --k-for aime24=32 (repeatable)")
    ev.add_argument("--paper-protocol", action="store_true",
                    help="the papers' k: avg@32 for aime24, aime25 and amc, --k for the rest")
    ev.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy, k must be 1)")
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=1024, help="completion budget (the papers use 8192)")
    ev.add_argument("--reward", default=None,
                    help="grader for every row: math, choice, sandbox or module:function "
                         "(default: sandbox for the sandbox, choice when the gold is a letter A-J, else math)")
    ev.add_argument("--shuffle-choices", action="store_true",
                    help="shuffle multiple-choice options (lines 'A) ...') per question, seeded; the gold letter follows")
    ev.add_argument("--seed", type=int, default=0, help="seed for sampling and option shuffling")
    ev.add_argument("--prompt-field", default="prompt")
    ev.add_argument("--answer-field", default="answer", help="gold column (verl's reward_model.ground_truth is found too)")
    ev.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                    help="hf: transformers generate; vllm: a vLLM engine (pip install 'sftrl[vllm]', GPU)")
    ev.add_argument("--batch-size", type=int, default=128, help="sequences per generate call (hf backend)")
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--device", default=None, help="e.g. cuda; default: CPU")
    ev.add_argument("--output-dir", "-o", default=None,
                    help="where samples.jsonl and summary.json go (default: runs/eval/<model>)")
    ev.add_argument("--overwrite", action="store_true", help="discard samples already in --output-dir")
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
    except (ConfigError, DataError, RewardError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"sftrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
