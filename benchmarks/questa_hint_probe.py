"""Can the sandbox base model use QuestA's hint? Its sampled reward on training prompts, plain and with the
hint QuestA adds to the question (`uft_schedule=questa`: "\n\n## Hint." + the first 25% or 50% of the
solution's characters; no hint under 10 characters).

QuestA (arXiv 2507.13266) assumes a model that reads a partial solution in the question and continues it,
so that a hard problem becomes solvable. A sandbox QuestA run rewarded 0-9% of rollouts in its first 15
steps against GRPO's ~30%; this script measures the cause without training: the same base model, the
same prompts and the same sampling (temperature 1.0, 8 samples per prompt), with and without the hint.

Run (1-5 minutes on 2 cores):

    python benchmarks/questa_hint_probe.py                     # 64 training prompts x 8 samples, seeds 0 1 2
    python benchmarks/questa_hint_probe.py --prompts 128 --seeds 0

Prints, per hint share, how many prompts got a hint, the mean reward over seeds (min-max), and one prompt
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
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5], help="hint shares")
    args = parser.parse_args()
    if args.prompts < 16 or args.prompts % 16:
        parser.error(f"--prompts: a positive multiple of 16, got {args.prompts}")

    import torch

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
    print("| hint share | prompts with a hint | mean reward (min-max over seeds) |")
    print("|---:|---:|---|")
    shown = []
    for share in args.shares:
        hints = [questa_hint(e.demonstration or "", share) for e in examples]
        hinted = [dataclasses.replace(e, prompt=with_hint(e.prompt, h)) for e, h in zip(examples, hints)]
        means = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            rewards = [trainer.rollouts(hinted[i:i + 16]).rewards.nan_to_num() for i in range(0, len(hinted), 16)]
            means.append(float(torch.cat(rewards).mean()))
        print(f"| {share:.2f} | {sum(map(bool, hints))}/{len(examples)} | {sum(means) / len(means):.3f} "
              f"({min(means):.3f}-{max(means):.3f}) |")
        torch.manual_seed(args.seeds[0])
        shown.append((hinted[1].prompt, trainer.generate([hinted[1]], 4).texts))
    print(f"\nOne prompt (answer {examples[1].answer}):")
    for prompt, texts in shown:
        print(f"  {prompt!r} -> {texts}")


if __name__ == "__main__":
    main()
