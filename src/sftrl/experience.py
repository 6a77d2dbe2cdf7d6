"""A step's experience for a policy-gradient term, collected in named stages over one batch of prompts:
sample the groups (demonstrations placed in them as the method says) -> score them -> group advantages;
then the step's rollout metrics, a pure function of every process's gathered values."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import losses
from .config import Config
from .data import Example, render_prompt
from .methods.base import Placement, Rollouts
from .parallel import Collective
from .rewards import combine, function_metrics, nanmean, nanstd
from .rewards.scorer import Scorer
from .rollout import Completions, generate_completions
from .rows import Rows

# (examples, samples per example, a continuation per example or None) -> the rollout backend's completions
Generate = Callable[[list[Example], int, list[str] | None], Completions]


@dataclass
class Groups:
    """The step's sampled groups before scoring: each prompt's rollouts, then its demonstration when placed."""

    prompt_ids: list[list[int]]
    target_ids: list[list[int]]
    truncated: list[bool]
    texts: list[str]  # what the reward functions grade (UFT: the hint + the completion)
    is_demo: list[bool]
    group_size: int


def sample(policy, tokenizer, examples: list[Example], num_generations: int, config: Config, engine=None,
           greedy: bool = False, continuations: list[str] | None = None) -> Completions:
    """`num_generations` completions of each example's rendered prompt at the run's sampling settings, by
    the rollout engine (None: transformers' generate); `continuations` (one text per example) are appended
    to the rendered prompts, so the samples continue them (UFT's hints)."""
    texts = [render_prompt(tokenizer, e.prompt, config.chat_template_kwargs) for e in examples]
    if continuations is not None:
        texts = [text + extra for text, extra in zip(texts, continuations)]
    return generate_completions(
        policy, tokenizer, texts, num_generations=num_generations, max_new_tokens=config.max_completion_length,
        temperature=config.temperature, top_p=config.top_p, batch_size=config.generation_batch_size,
        max_prompt_length=config.max_prompt_length, greedy=greedy, min_new_tokens=config.min_completion_length,
        engine=engine)


def sample_groups(examples: list[Example], placement: Placement, hints: list[str] | None, num_generations: int,
                  generate: Generate, rows: Rows) -> Groups:
    """Sample each prompt's group. placement: NONE (G rollouts), REPLACE (G-1 rollouts + the demonstration,
    LUFFY), APPEND (G rollouts + the demonstration, SRFT) or PREFIX (G rollouts that continue the prompt's
    hint `hints[i]`, a prefix of its demonstration: UFT; the hint is part of each row's prompt)."""
    if (placement is Placement.PREFIX) != (hints is not None):
        raise ValueError("rollouts: hints are given exactly when placement is PREFIX")
    if hints is not None and len(hints) != len(examples):
        raise ValueError(f"rollouts: {len(hints)} hints for {len(examples)} prompts")
    sampled = num_generations - 1 if placement is Placement.REPLACE else num_generations
    in_group = placement in (Placement.REPLACE, Placement.APPEND)
    completions = generate(examples, sampled, hints)
    groups = Groups([], [], [], [], [], sampled + in_group)
    for i, example in enumerate(examples):
        for j in range(i * sampled, (i + 1) * sampled):
            groups.prompt_ids.append(completions.prompt_ids[j])
            groups.target_ids.append(completions.completion_ids[j])
            groups.truncated.append(completions.truncated[j])
            groups.texts.append(completions.texts[j] if hints is None else hints[i] + completions.texts[j])
            groups.is_demo.append(False)
        if in_group:
            ids, cut = rows.demonstration_ids(example)
            groups.prompt_ids.append(completions.prompt_ids[i * sampled])
            groups.target_ids.append(ids)
            groups.truncated.append(cut)
            groups.texts.append(rows.tokenizer.decode(ids, skip_special_tokens=True))
            groups.is_demo.append(True)
    return groups


def advantages(rewards: torch.Tensor, group_size: int, config: Config, eps: float,
               collective: Collective) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's group advantages and group stds; batch-std scaling uses every process's rewards."""
    if collective.world == 1 or config.scale_rewards != "batch":
        return losses.group_advantages(rewards, group_size, config.scale_rewards, eps)
    everyone = collective.gather(rewards)
    advantages, group_std = losses.group_advantages(everyone, group_size, "batch", eps)
    start = collective.rank * len(rewards)
    groups = len(rewards) // group_size
    return advantages[start:start + len(rewards)], group_std[start // group_size:][:groups]


def rollout_metrics(rewards: torch.Tensor, per_function: torch.Tensor, is_demo: torch.Tensor, truncated: torch.Tensor,
                    lengths: torch.Tensor, group_std: torch.Tensor, advantages: torch.Tensor | None,
                    logged: dict[str, float], names: list[str], scale_rewards: str) -> dict[str, float]:
    """TRL's reward and completion metrics over the step's rollouts (every process's), the demonstrations'
    under demo/; `advantages` is needed only when there are demonstrations."""
    if scale_rewards == "batch":  # TRL: zero std means the batch's
        zero_std = float(torch.isclose(losses.nanstd(rewards), torch.tensor(0.0)))
    else:
        zero_std = float(torch.isclose(group_std, torch.zeros_like(group_std)).float().mean())
    own = lengths[~is_demo]
    terminated = lengths[~is_demo & ~truncated]
    metrics = {
        "reward": nanmean(rewards[~is_demo]),
        "reward_std": nanstd(rewards[~is_demo]),
        "frac_reward_zero_std": zero_std,
        "frac_reward_unscorable": float(rewards.isnan()[~is_demo].float().mean()),
        **function_metrics(per_function[~is_demo], names),
        **logged,
        "completions/mean_length": float(own.mean()),
        "completions/min_length": float(own.min()),
        "completions/max_length": float(own.max()),
        "completions/clipped_ratio": float(truncated[~is_demo].float().mean()),
        "completions/mean_terminated_length": float(terminated.mean()) if len(terminated) else 0.0,
    }
    if is_demo.any():
        assert advantages is not None
        metrics.update({"demo/reward": nanmean(rewards[is_demo]), **function_metrics(per_function[is_demo], names, "demo/"),
                        "demo/advantage": float(advantages[is_demo].mean()),
                        "demo/mean_length": float(lengths[is_demo].mean())})
    return metrics


def unscorable_warning(rewards: torch.Tensor, is_demo: torch.Tensor, step: int) -> str | None:
    """What to say when some targets got None from every reward function (the trainer says it once a run)."""
    unscorable = rewards.isnan()
    if not unscorable.any():
        return None
    return (f"warning: at step {step}, {int(unscorable[~is_demo].sum())} of {int((~is_demo).sum())} rollouts (and "
            f"{int(unscorable[is_demo].sum())} of {int(is_demo.sum())} demonstrations) got None from every reward "
            "function; they are left out of the group means and stds and get advantage 0, as in TRL (said once; "
            "frac_reward_unscorable counts them every step)")


def collect(examples: list[Example], placement: Placement, hints: list[str] | None, *, config: Config,
            std_eps: float, generate: Generate, rows: Rows, scorer: Scorer, collective: Collective,
            trainer_state) -> Rollouts:
    """Sample, score and compute the advantages of one step's groups (collective: every process calls it).
    Demonstrations are scored by the same reward functions as rollouts and enter their group's mean and
    std (LUFFY Eq. 3; SRFT Eq. 6-7). The metrics are the whole step's, over every process's rollouts (as
    TRL logs them); the advantages stay this process's."""
    t0 = time.perf_counter()
    groups = sample_groups(examples, placement, hints, config.num_generations, generate, rows)
    t_gen = time.perf_counter() - t0
    per_function, logged = scorer.score(examples, groups.texts, groups.target_ids, groups.group_size,
                                        groups.is_demo, trainer_state)
    rewards = combine(per_function, scorer.weights)  # (N,) TRL's weighted nansum; NaN: unscorable
    advantage, group_std = advantages(rewards, groups.group_size, config, std_eps, collective)
    demo, cut = torch.tensor(groups.is_demo), torch.tensor(groups.truncated)
    lengths = torch.tensor([len(t) for t in groups.target_ids], dtype=torch.float32)
    rewards_all, per_function_all, demo_all, cut_all, lengths_all, group_std_all = collective.gather_tensors(
        rewards, per_function, demo, cut, lengths, group_std)
    logged_means = {name: sum(values) / len(values) for name, values in collective.gather_lists(logged).items()}
    advantages_all = collective.gather_tensors(advantage)[0] if bool(demo_all.any()) else None
    metrics = rollout_metrics(rewards_all, per_function_all, demo_all, cut_all, lengths_all, group_std_all,
                              advantages_all, logged_means, scorer.names, config.scale_rewards)
    metrics.update({"time/generate": t_gen, "time/score": time.perf_counter() - t0 - t_gen})
    return Rollouts(groups.prompt_ids, groups.target_ids, torch.tensor(groups.is_demo), torch.tensor(groups.truncated),
                    rewards, advantage, groups.group_size, metrics)
