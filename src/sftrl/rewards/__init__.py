"""Rewards: built-in graders (:mod:`.graders`), the time-limited process pool they grade math in
(:mod:`.pool`) and TRL's reward contract (:mod:`.contract`: loading, calling, combining).

Importing this package registers the built-in graders ``math`` and ``choice`` and the negative
control ``coin`` (:mod:`.control`) with :mod:`sftrl.registry`; the sandbox registers ``sandbox`` there itself, as a user's plugin would.
"""

from .. import registry
from ..errors import RewardError
from .contract import (
    RewardFunction,
    as_completions,
    callable_name,
    combine,
    function_metrics,
    is_async_callable,
    load_reward,
    load_rewards,
    nanmean,
    nanstd,
    reward_matrix,
    score_completions,
)
from .control import coin_reward, coin_value
from .graders import (
    MATH_GRADING_TIMEOUT,
    answer_section,
    choice_label,
    choice_prediction,
    choice_reward,
    completion_text,
    grade_math,
    grade_math_batch,
    last_boxed,
    math_prediction,
    math_reward,
    normalize_math_answer,
    shutdown_grading_pool,
)

registry.register_reward("math", math_reward)
registry.register_reward("choice", choice_reward)
# The negative control; a training run builds its own coin from coin_reward_prob and its seed.
registry.register_reward("coin", coin_reward(0.5, 0))

__all__ = [
    "MATH_GRADING_TIMEOUT", "RewardError", "RewardFunction", "answer_section", "as_completions", "callable_name",
    "choice_label", "choice_prediction", "choice_reward", "coin_reward", "coin_value", "combine", "completion_text", "function_metrics",
    "grade_math", "grade_math_batch", "is_async_callable", "last_boxed", "load_reward", "load_rewards",
    "math_prediction", "math_reward", "nanmean", "nanstd", "normalize_math_answer", "reward_matrix",
    "score_completions", "shutdown_grading_pool",
]
