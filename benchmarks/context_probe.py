"""Can the sandbox base model use what a method puts in its context? Its sampled reward on training prompts,
plain, with the hint QuestA adds to the question (`uft_schedule=questa`: "\n\n## Hint." + the first 25% or
50% of the solution's characters; no hint under 10 characters), and in OPSD's teacher context (the prompt
through `opsd_teacher_template`, the demonstration in it; the sandbox recipe's template by default).

QuestA (arXiv 2507.13266) assumes a model that reads a partial solution in the question and continues it,
so that a hard problem becomes solvable. A sandbox QuestA run rewarded 0-9% of rollouts in its first 15
steps against GRPO's ~30%, and a sandbox OPSD run fell from 27% to 8%; this script measures the cause
without training: the same base model, the same prompts and the same sampling (temperature 1.0, 8 samples
per prompt), with and without what the method adds. OPSD's teacher is only as good as the model is at
reading a demonstration in its context: its sampled reward there says how good a teacher it is.

Run (1-5 minutes on 2 cores):

    python benchmarks/context_probe.py                     # 64 training prompts x 8 samples, seeds 0 1 2
    python benchmarks/context_probe.py --prompts 128 --seeds 0 --opsd-template $'{demonstration}\n{prompt}'

Prints, per context (plain, each QuestA hint share, OPSD's teacher), how many prompts got something added,
the mean reward over seeds (min-max), and one prompt
with its samples.
"""
import argparse
import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="training prompts (a multiple of 16)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5], help="QuestA hint shares")
    parser.add_argument("--opsd-template", default="{prompt}\n{demonstration}\n{prompt}",
                        help="OPSD's teacher template (default: recipes/sandbox-opsd.yaml's)")
    args = parser.parse_args()
    if args.prompts < 16 or args.prompts % 16:
        parser.error(f"--prompts: a positive multiple of 16, got {args.prompts}")

    import torch

    from sftrl.methods.opsd import teacher_prompt
    from sftrl.methods.uft import questa_hint, with_hint
    from sftrl.trainer import Trainer
    from sftrl.validate import load_config

    config = load_config(overrides=dict(method="grpo", model="sandbox", train_data="sandbox", eval_data=None,
                                        max_steps=1, batch_size=16, num_generations=8, max_completion_length=64,
                                        temperature=1.0, progress=False, output_dir="/tmp/questa-hint-probe",
                                        save_every=0))
    trainer = Trainer(config)
    examples = trainer.rows.examples[:args.prompts]
    print(f"sandbox base model, {len(examples)} training prompts x {config.num_generations} samples at temperature "
          f"{config.temperature}, seeds {' '.join(map(str, args.seeds))}\n")
    print("| context | prompts with something added | mean reward (min-max over seeds) |")
    print("|---|---:|---|")
    contexts = []
    for share in args.shares:
        hints = [questa_hint(e.demonstration or "", share) for e in examples]
        contexts.append((f"QuestA hint {share:.2f}" if share else "plain prompt", sum(map(bool, hints)),
                         [dataclasses.replace(e, prompt=with_hint(e.prompt, h)) for e, h in zip(examples, hints)]))
    contexts.append(("OPSD teacher context", len(examples),
                     [dataclasses.replace(e, prompt=teacher_prompt(e.prompt, e.demonstration or "", args.opsd_template))
                      for e in examples]))
    shown = []
    for name, added, hinted in contexts:
        means = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            rewards = [trainer.rollouts(hinted[i:i + 16]).rewards.nan_to_num() for i in range(0, len(hinted), 16)]
            means.append(float(torch.cat(rewards).mean()))
        print(f"| {name} | {added}/{len(examples)} | {sum(means) / len(means):.3f} "
              f"({min(means):.3f}-{max(means):.3f}) |")
        torch.manual_seed(args.seeds[0])
        shown.append((hinted[1].prompt, trainer.generate([hinted[1]], 4).texts))
    print(f"\nOne prompt (answer {examples[1].answer}):")
    for prompt, texts in shown:
        print(f"  {prompt!r} -> {texts}")


if __name__ == "__main__":
    main()
