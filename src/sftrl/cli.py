"""Command line: `sftrl train | eval | compare | report | analyze tokens | analyze map | sandbox prepare`:
the argument parser and main; what each subcommand does is in :mod:`sftrl.commands`.

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
import logging
import os
import sys

from .commands import (cmd_analyze_map, cmd_analyze_tokens, cmd_compare, cmd_eval, cmd_report, cmd_sandbox_prepare,
                       cmd_train)
from .errors import SftrlError, one_line


def _quiet_libraries() -> None:
    # Keep the progress bar readable: transformers' and datasets' info chatter goes to warnings only.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per checkpoint in analyze/compare


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that loads models and renders prompts takes, as `sftrl train` has them as fields."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom modelling code from the model repositories (config: trust_remote_code)")
    parser.add_argument("--chat-template-kwargs", default=None, metavar="JSON",
                        help="extra arguments of the chat template, as in training (config: chat_template_kwargs), "
                             "e.g. '{\"enable_thinking\": false}'")


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
    cmp.add_argument("--methods", nargs="+", default=None, help="the rows; grpo-random is the negative control, GRPO rewarded by a coin paying with the base model's "
                     "measured pass rate; NAME=METHOD is a row of its own running METHOD (e.g. questa=uft, with "
                     "questa:key=value settings); default: all (sft grpo grpo-random sft-then-grpo grpo-then-sft static luffy "
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
    cmp.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides for every run, e.g. learning_rate=5e-4; LABEL:key=value for one row's runs "
                          "only, e.g. opd:opd_teacher=runs/sft/model or questa:uft_schedule=questa")
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
