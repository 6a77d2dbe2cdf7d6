"""A training run's reward scoring: the reward functions its config names, called on a step's completions
as TRL's GRPOTrainer calls them (dataset columns, `trainer_state`, `log_metric`; see :mod:`.contract`)."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import TrainerState

from .. import registry
from ..config import Config
from ..data import Example
from .contract import RESERVED_KWARGS, as_completions, load_rewards, reward_matrix
from .control import coin_reward


def reward_columns(examples: list[Example], repeat: int | list[int] = 1) -> dict[str, list]:
    """Keyword columns for TRL-style reward functions: `answer` plus every other dataset column,
    each example's value repeated for its completions (`repeat` of them, or `repeat[i]` for example i)."""
    counts = [repeat] * len(examples) if isinstance(repeat, int) else repeat
    columns: dict[str, list] = {"answer": [e.answer for e, n in zip(examples, counts) for _ in range(n)]}
    for key in examples[0].columns:
        columns.setdefault(key, [e.columns.get(key) for e, n in zip(examples, counts) for _ in range(n)])
    return columns


def trainer_state(config: Config, step: int, max_steps: int, epoch: float) -> TrainerState:
    """What TRL passes reward functions as `trainer_state`: global_step counts finished optimizer steps."""
    return TrainerState(global_step=step, max_steps=max_steps, train_batch_size=config.batch_size, epoch=epoch,
                        logging_steps=config.logging_steps, save_steps=config.save_every)


class Scorer:
    """The run's reward functions (reward_funcs: "auto" is the training task's own verifier, "coin" the
    negative control seeded by the run) and their weights."""

    def __init__(self, config: Config):
        registered = registry.data_source_of(config.train_data)
        verifier = (registered[0].verifier if registered is not None else None) or "math"
        specs = [verifier if s == "auto" else coin_reward(config.coin_reward_prob, config.seed) if s == "coin" else s
                 for s in config.reward_funcs]
        self.config = config
        self.functions = load_rewards(specs)
        self.weights = config.reward_weights

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.functions]

    def columns(self, examples: list[Example], repeat: int) -> dict[str, list]:
        """The dataset columns reward functions get, one value per completion: `answer`, every other
        column, and (as TRL passes every column) the answer and demonstration under their own names."""
        cfg = self.config
        columns = reward_columns(examples, repeat)
        for name, value in ((cfg.answer_field, lambda e: e.answer), (cfg.demo_field, lambda e: e.demonstration)):
            if "." not in name and name not in columns and name not in RESERVED_KWARGS:
                columns[name] = [value(e) for e in examples for _ in range(repeat)]
        return columns

    def score(self, examples: list[Example], texts: list[str], target_ids: list[list[int]], group_size: int,
              is_demo: list[bool], state: TrainerState) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Each reward function's rewards for each target (row i belongs to examples[i // group_size]), (N, F),
        NaN for None; and every value the functions logged with log_metric, by name."""
        prompts = [examples[row // group_size].prompt for row in range(len(texts))]
        logged: dict[str, list[float]] = defaultdict(list)
        names = []
        for row, demo in enumerate(is_demo):
            example = examples[row // group_size]
            names.append(f"{example.source} row {example.index} "
                         f"({'its demonstration' if demo else f'rollout {row % group_size}'})")
        per_function = reward_matrix(
            self.functions, prompts, as_completions(prompts, texts), self.columns(examples, group_size),
            completion_ids=target_ids, trainer_state=state,
            log_metric=lambda name, value: logged[name].append(float(value)), row_names=names)
        return per_function, dict(logged)
