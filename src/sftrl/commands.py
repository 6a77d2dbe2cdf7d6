"""What each `sftrl` subcommand does with its parsed arguments (train, eval, compare, report, analyze tokens,
analyze map, sandbox prepare); the parser that fills them is :func:`sftrl.cli.build_parser`."""

from __future__ import annotations

import argparse
import functools
import json
import textwrap
from pathlib import Path

from .errors import ConfigError
from .formatting import number
from .progress import Progress


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
    from .eval_metrics import format_summary, summarize
    from .evaluate import VLLMSampler, run_benchmark, sample_with_generate
    from .grading import build_questions
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
    from .compare import compare
    from .compare_plan import DEFAULT_BUDGET, DEFAULT_LR_GRID
    from .config import parse_overrides
    from .summary import METHOD_ORDER

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
    # --methods takes every word up to the next option, so settings written after it land there: move them back.
    from .config import Config

    # `LABEL:key=value` is a setting for one row's runs (an opd teacher, a uft schedule)
    def for_one_row(item: str) -> bool:
        return ":" in item.split("=", 1)[0]

    def is_setting(item: str) -> bool:
        return "=" in item and (for_one_row(item) or item.split("=", 1)[0].strip() in Config.__dataclass_fields__)

    if args.methods:
        args.overrides = [item for item in args.methods if is_setting(item)] + list(args.overrides)
        args.methods = [item for item in args.methods if not is_setting(item)] or None
    for_row = [item for item in args.overrides if for_one_row(item)]  # the rest, `key=value`, is for every run
    row_settings: dict[str, dict] = {}
    for item in for_row:
        label, setting = item.split(":", 1)
        row_settings.setdefault(label.strip(), {}).update(parse_overrides([setting]))
    overrides = parse_overrides([item for item in args.overrides if item not in for_row])
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
            budget_amount=args.budget_amount, grid=args.grid, curve_every=args.curve_every, row_settings=row_settings)
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
