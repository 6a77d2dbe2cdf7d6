"""UFT (arXiv 2505.16984; Prefix-RFT, arXiv 2507.01679, is the same family): rollouts start from a hint,
a prefix of the demonstration whose length shrinks to zero over training, plus a log-likelihood term on
the hint tokens. Read from the released code (liumy2010/UFT); the paper text was not available.

- Hint: the demonstration split on `uft_step_separator` into S solution steps (the last segment, the
  closing answer, is never among them), grouped into K = min(`uft_hint_blocks`, S) blocks with
  boundaries b_k = round(kS/K). At step t ≤ T_hint = `uft_hint_steps`:
  p(t) = p_lo + ½(p_hi - p_lo)(1 + cos(πt/T_hint)), m ~ Binomial(K, p(t)), and the hint is the first b_m
  steps; after T_hint no hint. t counts from 1 (the released code's timestep). One draw per prompt,
  shared by its G rollouts.
- Rollout: the context is the prompt then the hint; y is sampled. GRPO applies to the tokens of y; the
  reward grades hint + y, the whole answer.
- Loss: L_GRPO(y) + c_h·(token-mean NLL of the step's hint tokens), c_h = `uft_hint_coef`, plus the
  preset's KL (k3, β = 0.001) and entropy bonus 0.001 on y.
"""

import math
import random

from ..data import Example

from .base import Method, Metrics, Placement, State, StepContext, StepKind, always, grpo_loss, only

# The released code's settings (G = 4, 256 prompts, lr 1e-6 are in recipes/paper-uft.yaml).
PRESET = {"beta": 0.001, "entropy_coef": 0.001, "loss_type": "dapo", "scale_rewards": "group"}


def solution_steps(demonstration: str, separator: str) -> list[str]:
    """The demonstration's solution steps: its segments between separators, without the last one (the
    closing answer). Trailing separators are dropped first, so they leave no empty answer segment."""
    text = demonstration
    while text.endswith(separator):
        text = text[:-len(separator)]
    return text.split(separator)[:-1]


def block_boundaries(steps: int, max_blocks: int) -> list[int]:
    """b_0..b_K with K = min(max_blocks, steps), b_k = round(k·S/K) (Python's round, as the released code)."""
    blocks = min(max_blocks, steps)
    if blocks == 0:
        return [0]
    return [round(k / blocks * steps) for k in range(blocks + 1)]


def hint_probability(t: int, hint_steps: int, high: float, low: float) -> float:
    """p(t), the chance that each block is in the hint at 1-based step t; 0 after T_hint."""
    if t > hint_steps:
        return 0.0
    return low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * t / hint_steps))


def hint_text(steps: list[str], uniforms: list[float], p: float, max_blocks: int, separator: str) -> tuple[str, int]:
    """The hint for one prompt: m = #{k < K : u_k < p} ~ Binomial(K, p) blocks, i.e. its first b_m steps;
    returns (text, b_m). Each step keeps its separator, so the rollout starts on a fresh step."""
    bounds = block_boundaries(len(steps), max_blocks)
    m = sum(u < p for u in uniforms[:len(bounds) - 1])
    taken = bounds[m]
    return "".join(step + separator for step in steps[:taken]), taken


def init_state(config, train_size: int) -> dict:
    return {"rng": random.Random(f"sftrl.uft:{config.seed}").getstate()}


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    t = trainer.step + 1
    p = hint_probability(t, cfg.uft_hint_steps, cfg.uft_hint_prob_high, cfg.uft_hint_prob_low)
    # Every process draws the uniforms of every prompt of the step and keeps its own share, so the
    # hints do not depend on the number of processes.
    generator = random.Random()
    generator.setstate(state["rng"])
    draws = [[generator.random() for _ in range(cfg.uft_hint_blocks)] for _ in range(cfg.batch_size)]
    state["rng"] = generator.getstate()
    hints, taken, total = [], 0, 0
    for example, uniforms in zip(examples, trainer.local_rows(draws)):
        assert example.demonstration is not None  # needs_demonstrations: every row was loaded with one
        steps = solution_steps(example.demonstration, cfg.uft_step_separator)
        text, count = hint_text(steps, uniforms, p, cfg.uft_hint_blocks, cfg.uft_step_separator)
        hints.append(text)
        taken, total = taken + count, total + len(steps)


    metrics = trainer.policy_backward(trainer.rollouts(examples, Placement.PREFIX, hints=hints), grpo_loss(cfg))
    hinted = [(e, trainer.text_ids(h)) for e, h in zip(examples, hints) if h]
    # c_h · token-mean NLL of the hint tokens ({} and no backward when no process has a hint).
    metrics.update(trainer.sft_backward([e for e, _ in hinted], weight=cfg.uft_hint_coef,
                                        targets=[ids for _, ids in hinted]))
    hinted_count, steps_taken, steps_total = trainer.global_sums([len(hinted), taken, total])
    return {**metrics, "uft/hint_prob": p, "uft/hinted_prompts": hinted_count,
            "uft/hint_share": steps_taken / steps_total if steps_total else 0.0}


METHOD = Method(name="uft", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, init_state=init_state, preset=PRESET)
