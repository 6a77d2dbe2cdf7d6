"""Command line: `sftrl train | eval | compare | report | analyze tokens | analyze map | sandbox prepare`.

    sftrl train                                   # the default method on the built-in sandbox
    sftrl train --config recipes/sandbox-grpo.yaml max_steps=50 learning_rate=5e-4
    sftrl train --help-config                     # every config field with its help text
    sftrl eval --model runs/sft-seed0/model --data sandbox:test sandbox:ood --k 8
    sftrl eval --model Qwen/Qwen2.5-Math-7B --data math_reasoning.parquet --paper-protocol --backend vllm
    sftrl compare --seeds 0 1 2                   # every method on the sandbox, equal budgets
    sftrl report runs/sasr-seed0 runs/srft-seed0 -o report
    sftrl analyze tokens --before sandbox --after runs/sft-seed0/model runs/grpo-seed0/model
    sftrl analyze map --references sandbox runs/sft-seed0/model runs/grpo-seed0/model --runs runs/sasr-seed0
    sftrl sandbox prepare [--rebuild]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from .errors import ConfigError, SftrlError, one_line
from .formatting import number
from .progress import Progress


def _quiet_libraries() -> None:
    # Keep the progress bar readable: transformers' and datasets' info chatter goes to warnings only.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per checkpoint in analyze/compare


def cmd_train(args: argparse.Namespace) -> int:
    from .config import field_help
    from .validate import load_config

    if args.help_config:
        from .config import Config

        defaults = Config().to_dict()
        for name, text in field_help().items():
            print(f"{name} = {json.dumps(defaults[name])}\n{textwrap.indent(textwrap.fill(text, 96), '    ')}")
        return 0
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        from .memory import report
        from .methods import METHODS
        from .validate import check_range

        check_range("--gpus", args.gpus, 1)
        check_range("--gpu-memory", args.gpu_memory, 0, low_open=True)
        method = METHODS[config.method]
        print(report(config, method.needs_reference(config), method.needs_rollouts, args.gpus, args.gpu_memory))
        return 0
    from .trainer import train

    train(config)
    return 0


def _dataset_name(spec: str) -> str:
    """A short name for a --data entry: 'sandbox:test' as is, a file or directory by its stem."""
    return spec if ":" in spec and not Path(spec).exists() else Path(spec.rstrip("/")).stem or spec


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text.strip("./")).strip("-") or "model"


def cmd_eval(args: argparse.Namespace) -> int:
    from .validate import check_output_dir, check_range
    from .data import load_examples
    from .evaluate import VLLMSampler, build_questions, format_summary, run_benchmark, sample_with_generate, summarize
    from .models import is_adapter_dir, load_model, load_tokenizer, model_fingerprint, resolve_model_path

    check_range("--k", args.k, 1)
    check_range("--limit", args.limit, 1, allow_none=True)
    check_range("--max-new-tokens", args.max_new_tokens, 1)
    check_range("--batch-size", args.batch_size, 1)
    check_range("--temperature", args.temperature, 0)
    check_range("--top-p", args.top_p, 0, 1, low_open=True)
    if args.output_dir:
        check_output_dir("--output-dir", args.output_dir)
    if args.temperature == 0.0 and args.k > 1:
        raise ConfigError("--temperature 0 (greedy) gives k identical samples; use --k 1 or a temperature > 0")
    k_by_source = dict(PAPER_K) if args.paper_protocol else {}
    for item in args.k_for:
        name, _, value = item.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--k-for takes SOURCE=K with K >= 1, got {item!r}")
        k_by_source[name] = int(value)
    path = resolve_model_path(args.model, "--model")  # checked before any data is read or file touched
    questions = []
    for spec in args.data:
        examples = load_examples(spec, args.split, prompt_field=args.prompt_field, answer_field=args.answer_field,
                                 require_demo=False, limit=args.limit)
        questions += build_questions(examples, _dataset_name(spec), args.k, k_by_source, args.reward,
                                     args.shuffle_choices, args.seed)
    out_dir = Path(args.output_dir or Path("runs/eval") / _slug(args.model))
    samples_path = out_dir / "samples.jsonl"
    settings = {"model": args.model, "k": args.k, "k_by_source": k_by_source, "shuffle_choices": args.shuffle_choices,
                "model_sha256": model_fingerprint(path)}  # samples are keyed by the model's content
    template = _chat_template_kwargs(args.chat_template_kwargs)
    if template is not None:
        settings["chat_template_kwargs"] = template  # samples are keyed by how prompts were rendered
    tokenizer = load_tokenizer(path, args.trust_remote_code)
    if args.backend == "vllm":
        if is_adapter_dir(path):
            raise ConfigError(f"--model: {args.model} is a LoRA adapter, which --backend vllm does not load; train "
                              "with merge_lora_on_save=true and pass its model-merged directory, or use --backend hf")
        sampler = VLLMSampler(path, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                              chat_template_kwargs=template)
        model = None
    else:
        sampler = functools.partial(sample_with_generate, chat_template_kwargs=template)
        model = load_model(path, args.dtype, args.trust_remote_code)
        if args.device:
            model.to(args.device)
    if args.overwrite and samples_path.exists():  # only once everything else is known to be usable
        samples_path.unlink()
    bar = Progress(len(questions), "eval", unit="question")
    records = run_benchmark(model, tokenizer, questions, samples_path, settings,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            batch_size=args.batch_size, seed=args.seed, sampler=sampler, progress=bar)
    bar.close()
    summary = summarize(records)
    print(f"{args.model} (temperature {args.temperature}, top_p {args.top_p})")
    print(format_summary(summary))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed}
    summary_path.write_text(json.dumps({"settings": {**settings, **sampling}, "data": args.data, **summary}, indent=2))
    print(f"wrote {summary_path} and {samples_path}")
    return 0


PAPER_K = {"aime24": 32, "aime25": 32, "amc": 32}
"""The papers' protocol: AIME and AMC as avg@32, everything else from one sample (pass@1)."""


def cmd_report(args: argparse.Namespace) -> int:
    from .validate import check_output_dir, check_range
    from .report import load_run, write_report

    check_range("--smooth", args.smooth, 1)
    check_output_dir("--output-dir", args.output_dir)
    labels = _labels(args.label, args.runs, "--label", default=lambda path: None)  # None: the run's method
    runs = [load_run(path, label) for path, label in zip(args.runs, labels)]
    images = write_report(runs, args.output_dir, window=args.smooth)
    print(f"wrote {len(images)} plots, {Path(args.output_dir) / 'report.md'} and {Path(args.output_dir) / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .validate import check_output_dir, check_range
    from .compare import DEFAULT_BUDGET, DEFAULT_LR_GRID, METHOD_ORDER, compare
    from .config import parse_overrides

    check_range("--jobs", args.jobs, 1)
    check_range("--k", args.k, 1)
    check_range("--eval-limit", args.eval_limit, 1)
    check_range("--temperature", args.temperature, 0)
    check_range("--checkpoint-every", args.checkpoint_every, 0)
    check_range("--curve-every", args.curve_every, 0)
    check_range("--budget-amount", args.budget_amount, 1, allow_none=True)
    for option in ("max_steps", "batch_size", "num_generations"):
        check_range(f"--{option.replace('_', '-')}", getattr(args, option), 1, allow_none=True)
    check_output_dir("--output-dir", args.output_dir)
    overrides = parse_overrides(args.overrides)
    # Budget values given as flags or as key=value land in the budget (the table's caption shows them).
    budget = {key: overrides.pop(key) for key in list(overrides) if key in DEFAULT_BUDGET}
    budget.update({key: value for key, value in (("max_steps", args.max_steps), ("batch_size", args.batch_size),
                                                 ("num_generations", args.num_generations)) if value is not None})
    grid = None
    if args.tune:
        grid = {"learning_rate": args.lr_grid or DEFAULT_LR_GRID["learning_rate"],
                "sft_learning_rate": args.sft_lr_grid or DEFAULT_LR_GRID["sft_learning_rate"]}
    compare(args.methods or METHOD_ORDER, args.seeds, args.output_dir, budget=budget, k=args.k,
            temperature=args.temperature, eval_limit=args.eval_limit, checkpoint_every=args.checkpoint_every,
            overrides=overrides, jobs=args.jobs, tune_grid=grid, budget_kind=args.budget,
            budget_amount=args.budget_amount, grid=args.grid, curve_every=args.curve_every)
    return 0


def _chat_template_kwargs(text: str | None) -> dict | None:
    """--chat-template-kwargs: a JSON object, e.g. '{"enable_thinking": false}'."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--chat-template-kwargs: not valid JSON ({exc.msg}): {text!r}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"--chat-template-kwargs: expected a JSON object such as '{{\"enable_thinking\": false}}', "
                          f"got {text!r}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that loads models and renders prompts takes, as `sftrl train` has them as fields."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom modelling code from the model repositories (config: trust_remote_code)")
    parser.add_argument("--chat-template-kwargs", default=None, metavar="JSON",
                        help="extra arguments of the chat template, as in training (config: chat_template_kwargs), "
                             "e.g. '{\"enable_thinking\": false}'")


def _path_label(path: str) -> str:
    """A run's directory name: runs/sft-seed0 and runs/sft-seed0/model are both 'sft-seed0'."""
    p = Path(path.rstrip("/"))
    return p.parent.name if p.name == "model" else p.name


def _labels(given: list[str] | None, paths: list[str], option: str, default=_path_label) -> list:
    """One label per path: the ones given (exactly one each) or default(path)."""
    if given and len(given) != len(paths):
        raise ConfigError(f"{option} was given {len(given)} times for {len(paths)} models or runs; give one each or none")
    return given or [default(p) for p in paths]


def cmd_analyze_tokens(args: argparse.Namespace) -> int:
    from .validate import check_output_dir, check_range
    from .analyze import analyze_tokens, probe_pairs
    from .models import resolve_model_path

    check_range("--limit", args.limit, 1)
    check_output_dir("--output-dir", args.output_dir)
    resolve_model_path(args.before, "--before")  # every model checked before anything is scored or written
    for model in args.after:
        resolve_model_path(model, "--after")
    results = analyze_tokens(args.before, args.after, _labels(args.label, args.after, "--label"),
                             probe_pairs(args.probe, args.limit, args.split), args.output_dir,
                             args.trust_remote_code, _chat_template_kwargs(args.chat_template_kwargs))
    for label, stats in results.items():
        print(f"{label}: mean |dp| {number(stats['mean_abs_shift'], '.3f')}, "
              f"{number(stats['share_moved_0.2'], '.1%')} of {stats['tokens']} tokens moved > 0.2 "
              f"({number(stats['share_up'], '.1%')} up, {number(stats['share_down'], '.1%')} down by > 0.05); "
              f"mean p {number(stats['mean_p_before'], '.3f')} -> {number(stats['mean_p_after'], '.3f')}")
        print("  by the before-model's entropy at the token (nats): " + "; ".join(
            f"{b['entropy']}: {b['tokens']} tokens, mean |dp| {number(b['mean_abs_shift'], '.3f')}"
            for b in stats["by_base_entropy"]))
    out = Path(args.output_dir)
    print(f"wrote {out / 'tokens.png'}, {out / 'tokens.json'} and {out / 'tokens.html'}")
    return 0


def cmd_analyze_map(args: argparse.Namespace) -> int:
    from .validate import check_output_dir, check_range
    from .analyze import analyze_map, probe_pairs
    from .models import resolve_model_path

    check_range("--limit", args.limit, 1)
    check_output_dir("--output-dir", args.output_dir)
    for model in args.references:
        resolve_model_path(model, "--references")
    result = analyze_map(args.references, _labels(args.reference_label, args.references, "--reference-label"),
                         args.runs, _labels(args.label, args.runs, "--label"),
                         probe_pairs(args.probe, args.limit, args.split), args.output_dir,
                         args.trust_remote_code, _chat_template_kwargs(args.chat_template_kwargs))
    for run in result["runs"]:
        path = " -> ".join(f"{p['step']}:({number(p['xy'][0], '.3f')},{number(p['xy'][1], '.3f')})"
                           for p in run["points"])
        print(f"{run['label']}: {path}")
    out = Path(args.output_dir)
    print(f"wrote {out / 'map.png'} and {out / 'map.json'}")
    return 0


def _describe_base(metadata: dict) -> str:
    lines = [f"{metadata.get('name')}: {number(metadata.get('num_parameters', 0) / 1e6, '.2f')}M parameters, "
             f"{metadata['settings']['steps']} pretraining steps ({metadata.get('train_seconds')} s on "
             f"{metadata.get('torch_threads')} threads)"]
    for split in ("test", "ood"):
        for family, row in metadata.get(split, {}).items():
            lines.append(f"  {split:<4} {family:<5}  greedy {number(row['greedy_accuracy'], '6.1%')}  sampled (T=1) "
                         f"{number(row['sampled_accuracy'], '6.1%')}  shortcut answers greedy "
                         f"{number(row['greedy_shortcut'], '6.1%')} sampled {number(row['sampled_shortcut'], '6.1%')}")
    return "\n".join(lines)


def cmd_sandbox_prepare(args: argparse.Namespace) -> int:
    from .validate import check_output_dir
    from .sandbox.prepare import base_model_dir, default_cache_dir, prepare_base_model, read_metadata

    if not args.rebuild and (args.force or args.output_dir):
        raise ConfigError(f"{'--force' if args.force else '--output-dir'} only applies with --rebuild")
    if args.rebuild:  # the directory is replaced by the new model: never a file, nor files of something else
        target = Path(args.output_dir) if args.output_dir else default_cache_dir()
        check_output_dir("--output-dir", target)
        if target.is_dir() and any(target.iterdir()) and read_metadata(target) is None:
            raise ConfigError(f"--output-dir: {target} holds files that are not a sandbox base model, and the rebuilt "
                              "model would replace them: choose an empty or new directory")
    shipped = base_model_dir()
    if not args.rebuild:
        print(_describe_base(read_metadata(shipped)))
        print(f"sandbox base model (shipped with sftrl, used for model=sandbox): {shipped}")
        return 0
    path = prepare_base_model(cache_dir=args.output_dir, force=args.force)
    print("rebuilt from the recipe:")
    print(_describe_base(read_metadata(path)))
    print("shipped:")
    print(_describe_base(read_metadata(shipped)))
    print(f"rebuilt base model: {path} (train with model={path})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftrl", description="SFT + GRPO post-training for reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: the sandbox)",
                           description="Train with a recipe and key=value overrides; no arguments trains the sandbox.")
    train.add_argument("--config", "-c", help="recipe YAML (a mapping of config fields)")
    train.add_argument("--help-config", action="store_true", help="list every config field and exit")
    train.add_argument("--dry-run", action="store_true",
                       help="check the config and print an estimate of the memory per GPU, then exit (see README, Memory)")
    train.add_argument("--gpus", type=int, default=8, help="with --dry-run: GPUs the run is sharded over (default 8)")
    train.add_argument("--gpu-memory", type=float, default=80.0, help="with --dry-run: GiB per GPU (default 80)")
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
    _add_model_options(ev)
    ev.set_defaults(func=cmd_eval)

    cmp = sub.add_parser("compare", help="every method x seeds on the sandbox under one budget: table and plots",
                         description="Train (or reuse) each method with each seed on the sandbox under the same "
                                     "budget, evaluate in and out of distribution, and write comparison.md (mean "
                                     "and 95%% confidence interval over seeds, paired differences), "
                                     "final_accuracy.png and the training-dynamics report.")
    cmp.add_argument("--methods", nargs="+", default=None, help="grpo-random is the negative control, GRPO rewarded by a coin paying with the base model's "
                     "measured pass rate; default: all (sft grpo grpo-random sft-then-grpo grpo-then-sft static luffy "
                     "srft hpt relift chord uft sasr gac)")
    cmp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    cmp.add_argument("--jobs", "-j", type=int, default=min(8, os.cpu_count() or 1),
                     help="runs at once, in separate processes sharing the CPU threads (default: the cores, at most 8)")
    cmp.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run (default: the sandbox budget, 50)")
    cmp.add_argument("--batch-size", type=int, default=None, help="prompts per step (default: 16)")
    cmp.add_argument("--num-generations", type=int, default=None, help="rollouts per prompt (default: 8)")
    cmp.add_argument("--budget", choices=("steps", "sequences", "tokens"), default="steps",
                     help="what every run gets the same amount of: optimizer steps (default), trained sequences, or "
                          "token passes (generated + trained tokens); see README, Compare")
    cmp.add_argument("--budget-amount", type=int, default=None,
                     help="with --budget sequences/tokens: how many (default: max_steps x sft_batch_size sequences, "
                          "80 token passes per such sequence)")
    cmp.add_argument("--grid", nargs="+", default=None, metavar="key=v1,v2",
                     help="regimes: each value of each key alone beside the default (any config field, sandbox knobs "
                          "and max_steps included), each in OUT/<key=value>/, and the regime map in OUT")
    cmp.add_argument("--curve-every", type=int, default=0,
                     help="keep a checkpoint every N steps and evaluate each (learning curves against steps and "
                          "token passes; 0 = final models only)")
    cmp.add_argument("--tune", action="store_true",
                     help="first choose each method's learning rate(s) on a grid, by sampled avg@k on sandbox:val")
    cmp.add_argument("--lr-grid", nargs="+", type=float, default=None,
                     help="learning_rate values to try with --tune (default: 3e-5 1e-4 3e-4)")
    cmp.add_argument("--sft-lr-grid", nargs="+", type=float, default=None,
                     help="sft_learning_rate values to try with --tune (default: 1e-4 3e-4 1e-3)")
    cmp.add_argument("--k", type=int, default=4, help="samples per evaluation prompt (avg@k, pass@k)")
    cmp.add_argument("--temperature", type=float, default=0.6, help="evaluation sampling temperature")
    cmp.add_argument("--eval-limit", type=int, default=200, help="prompts per evaluation split")
    cmp.add_argument("--checkpoint-every", type=int, default=0,
                     help="keep a checkpoint every N steps (for `sftrl analyze map`; 0 = final model only)")
    cmp.add_argument("--output-dir", "-o", default="runs/compare")
    cmp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run, e.g. learning_rate=5e-4")
    cmp.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="plots and a table from the metrics of one or many runs",
                         description="Overlay the training dynamics of runs (reward, accuracy, length, entropy, "
                                     "gradient norm, KL, SASR's p_t and step choices, SRFT's weights) as PNG files "
                                     "plus report.md and a self-contained report.html.")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.jsonl)")
    rep.add_argument("--output-dir", "-o", default="report", help="where the plots and pages go")
    rep.add_argument("--label", action="append", help="a legend label per run, in order (default: its method; "
                                                        "runs with the same label are drawn as mean and band)")
    rep.add_argument("--smooth", type=int, default=5, help="trailing moving-average window in steps (1 = none)")
    rep.set_defaults(func=cmd_report)

    ana = sub.add_parser("analyze", help="token probability shifts, and a map of models in probability space")
    ana_sub = ana.add_subparsers(dest="analyze_command", required=True)
    probe_help = "probe set: a dataset whose demonstrations are the scored responses (default: sandbox:test)"
    tok = ana_sub.add_parser("tokens", help="per-token probability changes from one model to others",
                             description="Score the probe responses under a model before training and one or more "
                                         "after it; plot and list which tokens' probabilities moved and how much.")
    tok.add_argument("--before", required=True, help="the starting model: hub id, directory or 'sandbox'")
    tok.add_argument("--after", required=True, nargs="+", help="trained model(s) to compare with it")
    tok.add_argument("--label", action="append", help="a label per --after model, in order")
    tok.add_argument("--probe", default="sandbox:test", help=probe_help)
    tok.add_argument("--split", default="test")
    tok.add_argument("--limit", type=int, default=100, help="probe pairs to score")
    tok.add_argument("--output-dir", "-o", default="analysis")
    _add_model_options(tok)
    tok.set_defaults(func=cmd_analyze_tokens)
    mp = ana_sub.add_parser("map", help="place checkpoints of runs relative to three reference models",
                            description="Each model is a point whose distances to three reference models (mean "
                                        "|p_a - p_b| on the probe tokens) match as closely as the plane allows; "
                                        "every run's checkpoints form a trajectory.")
    mp.add_argument("--references", required=True, nargs=3, metavar="MODEL", help="three reference models")
    mp.add_argument("--reference-label", action="append", help="a label per reference, in order")
    mp.add_argument("--runs", required=True, nargs="+", metavar="RUN_DIR", help="run directories (their start "
                                                                                 "model, checkpoints and final model)")
    mp.add_argument("--label", action="append", help="a label per run, in order")
    mp.add_argument("--probe", default="sandbox:test", help=probe_help)
    mp.add_argument("--split", default="test")
    mp.add_argument("--limit", type=int, default=100, help="probe pairs to score")
    mp.add_argument("--output-dir", "-o", default="analysis")
    _add_model_options(mp)
    mp.set_defaults(func=cmd_analyze_map)

    sandbox = sub.add_parser("sandbox", help="the built-in sandbox task")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    prep = sandbox_sub.add_parser("prepare", help="show the shipped sandbox base model, or rebuild it from its recipe",
                                  description="Without --rebuild: where the shipped base model is and what it does. "
                                              "With --rebuild: pretrain it again from the recorded recipe (2000 "
                                              "steps; the shipped weights took about 31 minutes on one CPU thread) "
                                              "and compare with the shipped one.")
    prep.add_argument("--rebuild", action="store_true", help="pretrain the base model from its recipe")
    prep.add_argument("--force", action="store_true", help="with --rebuild: retrain even if --output-dir already "
                                                          "holds a model made from the same recipe")
    prep.add_argument("--output-dir", "-o", default=None,
                      help="with --rebuild: where to write (default: $SFTRL_CACHE/sandbox/base-v2 or "
                           "~/.cache/sftrl/sandbox/base-v2)")
    prep.set_defaults(func=cmd_sandbox_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from .registry import RegistryError

    try:
        return args.func(args)
    except (SftrlError, RegistryError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"sftrl: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
