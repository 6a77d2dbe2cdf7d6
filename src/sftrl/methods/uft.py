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

Two other prefix-hint schedules, `uft_schedule` (ALGORITHMS.md says what was followed and what chosen):
- questa (QuestA, arXiv 2507.13266; its released code, foreverlasting1202/QuestA): the first
  ⌊f·len⌋ characters of the demonstration (after any `</think>`) go into the question as
  "\n\n## Hint." + prefix, none if under 10 characters; f = `uft_prefix_high` (0.5) for t ≤ T_hint,
  then `uft_prefix_low` (0.25). Plain GRPO on the augmented prompts, graded on the completion; no hint NLL.
- prefix-rft (Prefix-RFT, arXiv 2507.01679; ZeroYuHuang/prefix_rft): each prompt's G plain rollouts plus
  one that continues ⌊r·n⌋ of the demonstration's n tokens (at least 1, at most n - 1),
  r ~ U[low_t, `uft_prefix_high`], low_t a cosine from 0.95 to `uft_prefix_low` (0.05) over T_hint.
  Plain rollouts: group advantages among themselves; the prefixed one: r/(1+ε) on its sampled tokens and
  that minus the plain rollouts' mean reward on its prefix tokens, kept only on the top
  `uft_entropy_top` (20%) of the micro-batch's prefix tokens by entropy (0 elsewhere). No hint NLL.
"""

import dataclasses

import math
import random

import torch

from .. import losses
from ..data import Example
from ..rewards import combine

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


# The papers' prefix shares (high, low) when uft_prefix_high / uft_prefix_low are null.
PAPER_FRACTIONS = {"questa": (0.5, 0.25), "prefix-rft": (0.95, 0.05)}
QUESTA_MIN_HINT_CHARS = 10  # QuestA's add_prefix.py: a prefix under 10 characters is no hint
QUESTA_HINT_HEADER = "\n\n## Hint."  # QuestA's add_prefix.py: problem + "\n\n" + "## Hint." + prefix


def prefix_fractions(config) -> tuple[float, float]:
    """(high, low) of the questa or prefix-rft schedule: the config's, or the paper's where null."""
    high, low = PAPER_FRACTIONS[config.uft_schedule]
    return (high if config.uft_prefix_high is None else config.uft_prefix_high,
            low if config.uft_prefix_low is None else config.uft_prefix_low)


def questa_fraction(t: int, stage_steps: int, high: float, low: float) -> float:
    """QuestA's hint share at 1-based step t: `high` in stage 1 (t ≤ stage_steps), `low` after."""
    return high if t <= stage_steps else low


def questa_hint(demonstration: str, fraction: float) -> str:
    """QuestA's partial solution: the first int(len·fraction) characters of the solution (the text after
    the last `</think>`), or "" when that is under 10 characters."""
    solution = demonstration.split("</think>")[-1]
    prefix = solution[:int(len(solution) * fraction)]
    return prefix if len(prefix) >= QUESTA_MIN_HINT_CHARS else ""


def with_hint(prompt, hint: str):
    """The prompt with QuestA's hint appended to its (last user) message; unchanged for no hint."""
    if not hint:
        return prompt
    if isinstance(prompt, str):
        return prompt + QUESTA_HINT_HEADER + hint
    messages = [dict(m) for m in prompt]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    messages[last]["content"] = messages[last]["content"] + QUESTA_HINT_HEADER + hint
    return messages


def prefix_rft_low(t: int, decay_steps: int, high: float, low: float) -> float:
    """low_t at 1-based step t: Prefix-RFT's CosineDecayController from `high` to `low` over decay_steps
    (no warm-up), `low` after."""
    if t > decay_steps:
        return low
    return low + 0.5 * (1.0 + math.cos(math.pi * t / decay_steps)) * (high - low)


def prefix_length(tokens: int, fraction: float) -> int:
    """Prefix-RFT's prefix length: int(fraction·n), at least 1 (min_prefix_len) and at most n - 1, so one
    token is left to sample; 0 for an empty demonstration or fraction 0."""
    if tokens == 0 or fraction == 0:
        return 0
    return max(1, min(int(fraction * tokens), tokens - 1))


def init_state(config, train_size: int) -> dict:
    return {"rng": random.Random(f"sftrl.uft:{config.seed}").getstate()}


def _draws(trainer: StepContext, state: State, per_prompt: int) -> list[list[float]]:
    """This process's share of uniforms for every prompt of the step: every process draws them all, so
    the hints do not depend on the number of processes."""
    generator = random.Random()
    generator.setstate(state["rng"])
    draws = [[generator.random() for _ in range(per_prompt)] for _ in range(trainer.config.batch_size)]
    state["rng"] = generator.getstate()
    return trainer.local_rows(draws)


def _demonstration(example: Example) -> str:
    assert example.demonstration is not None  # needs_demonstrations: every row was loaded with one
    return example.demonstration


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    schedule = trainer.config.uft_schedule
    if schedule == "questa":
        return questa_step(trainer, state, examples)
    if schedule == "prefix-rft":
        return prefix_rft_step(trainer, state, examples)
    cfg = trainer.config
    t = trainer.step + 1
    p = hint_probability(t, cfg.uft_hint_steps, cfg.uft_hint_prob_high, cfg.uft_hint_prob_low)
    hints, taken, total = [], 0, 0
    for example, uniforms in zip(examples, _draws(trainer, state, cfg.uft_hint_blocks)):
        steps = solution_steps(_demonstration(example), cfg.uft_step_separator)
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


def questa_step(trainer: StepContext, state: State, examples: list[Example]) -> Metrics:
    """QuestA: GRPO on prompts whose question carries the step's partial solution."""
    cfg = trainer.config
    fraction = questa_fraction(trainer.step + 1, cfg.uft_hint_steps, *prefix_fractions(cfg))
    hints = [questa_hint(_demonstration(e), fraction) for e in examples]
    hinted = [dataclasses.replace(e, prompt=with_hint(e.prompt, h)) for e, h in zip(examples, hints)]
    metrics = trainer.policy_backward(trainer.rollouts(hinted), grpo_loss(cfg))
    solutions = [len(_demonstration(e).split("</think>")[-1]) for e in examples]
    count, given, total = trainer.global_sums([sum(bool(h) for h in hints), sum(map(len, hints)), sum(solutions)])
    return {**metrics, "uft/prefix_fraction": fraction, "uft/hinted_prompts": count,
            "uft/hint_share": given / total if total else 0.0}


def prefix_rft_step(trainer: StepContext, state: State, examples: list[Example]) -> Metrics:
    """Prefix-RFT: G plain rollouts per prompt plus one that continues a prefix of its demonstration; the
    prefix tokens are trained with a policy gradient on their top-entropy share. The prefix reaches the
    token loss as two token inputs (Rollouts.token_inputs): `prefix`, 1 on each row's prefix tokens, and
    `prefix_advantages`, their advantage there (0 elsewhere, and on every token of a plain rollout)."""
    cfg = trainer.config
    high, low = prefix_fractions(cfg)
    low_t = prefix_rft_low(trainer.step + 1, cfg.uft_hint_steps, high, low)
    fractions = [low_t + (high - low_t) * u for (u,) in _draws(trainer, state, 1)]  # Beta(1, 1) on [low_t, high]
    plain = trainer.rollouts(examples)
    group = plain.group_size
    demos = [trainer.text_ids(_demonstration(e)) for e in examples]
    cuts = [prefix_length(len(ids), f) for ids, f in zip(demos, fractions)]
    hints = [trainer.decode(ids[:k]) for ids, k in zip(demos, cuts)]
    sampled = trainer.generate(examples, 1, continuations=hints)
    prompts, prefixes = [], []
    for i, ids in enumerate(demos):
        prompt, context = plain.prompt_ids[i * group], sampled.prompt_ids[i]
        # The prefix's tokens as the sampler saw them after the prompt (the demonstration's own if the
        # two texts tokenize differently at the seam).
        same = context[:len(prompt)] == prompt
        prompts.append(prompt)
        prefixes.append(list(context[len(prompt):]) if same else ids[:cuts[i]])
    targets = [p + list(c) for p, c in zip(prefixes, sampled.completion_ids)]
    texts = [h + c for h, c in zip(hints, sampled.texts)]  # graded whole, prefix and continuation
    per_function, _ = trainer.score(examples, texts, targets, 1, [False] * len(examples))
    rewards = combine(per_function, cfg.reward_weights)  # (P,)
    advantage, prefix_advantage = losses.prefix_rft_advantages(plain.rewards.view(len(examples), group), rewards)
    rows = len(examples) * group  # the plain rollouts

    def merged(plain_rows: list, extra: list) -> list:  # each prompt's G plain rows, then its prefixed one
        return [x for i in range(len(examples)) for x in plain_rows[i * group:(i + 1) * group] + [extra[i]]]

    def merged_tensor(plain_rows: torch.Tensor, extra: list) -> torch.Tensor:
        return torch.tensor(merged(plain_rows.tolist(), extra), dtype=plain_rows.dtype)

    n_prefix, n_tokens, n_prefixed, reward_sum = trainer.global_sums(
        [sum(map(len, prefixes)), sum(map(len, demos)), len(examples), float(torch.nan_to_num(rewards).sum())])
    target_ids = merged(plain.target_ids, targets)
    prefix_lengths = merged([0] * rows, [len(p) for p in prefixes])
    prefix_values = merged([0.0] * rows, prefix_advantage.tolist())
    rollouts = dataclasses.replace(
        plain, prompt_ids=merged(plain.prompt_ids, prompts), target_ids=target_ids,
        is_demo=torch.zeros(rows + len(examples), dtype=torch.bool),
        truncated=merged_tensor(plain.truncated, sampled.truncated), rewards=merged_tensor(plain.rewards, rewards.tolist()),
        advantages=merged_tensor(plain.advantages, advantage.tolist()), group_size=group + 1,
        token_inputs={  # (len(target),) each
            "prefix": [(torch.arange(len(t)) < k).float() for t, k in zip(target_ids, prefix_lengths)],
            "prefix_advantages": [torch.where(torch.arange(len(t)) < k, value, 0.0)
                                  for t, k, value in zip(target_ids, prefix_lengths, prefix_values)]})

    def prefix_loss(*, logps: torch.Tensor, old_logps: torch.Tensor, entropy: torch.Tensor, advantages: torch.Tensor,
                    is_demo: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        token_advantages = losses.prefix_token_advantages(advantages, inputs["prefix"] > 0, inputs["prefix_advantages"],
                                                          entropy, cfg.uft_entropy_top)  # (B, T)
        return losses.grpo_token_loss(logps, old_logps, token_advantages, cfg.epsilon, cfg.epsilon_high,
                                      clip=cfg.clip_ratio)

    metrics = trainer.policy_backward(rollouts, prefix_loss)
    return {**metrics, "uft/prefix_low": low_t, "uft/hinted_prompts": n_prefixed,
            "uft/hint_share": n_prefix / n_tokens if n_tokens else 0.0,
            "uft/prefixed_reward": reward_sum / n_prefixed if n_prefixed else 0.0}


METHOD = Method(name="uft", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, init_state=init_state, preset=PRESET)
