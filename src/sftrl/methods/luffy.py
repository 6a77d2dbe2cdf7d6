"""LUFFY (arXiv 2504.14945): mixed-policy GRPO, one demonstration inside each group.

Each group: G-1 rollouts plus the prompt's demonstration; advantages over the whole group (Eq. 3).
Rollout tokens: the usual GRPO ratio term. Demonstration tokens: -Â · f(π_θ(d_t)) with the policy
shaping f(p) = p/(p+γ), γ = `luffy_gamma` (Eq. 6), no clipping. The preset is the released code's:
no clipping anywhere, no std scaling, token sum / max response length (Dr. GRPO), no KL, entropy
bonus 0.001 (its lr, 1e-6, is in recipes/paper-luffy.yaml; the sandbox trains at its own lr). Were
the rewards std-scaled, the std ε would be the code's 1e-6.
"""

from .. import losses
from ..data import Example

from .base import VERL_STD_EPS, Method, Metrics, Placement, State, StepContext, StepKind, always, only

PRESET = {"clip_ratio": False, "scale_rewards": "none", "loss_type": "dr_grpo", "beta": 0.0, "entropy_coef": 0.001}


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config

    def luffy_loss(*, logps, old_logps, entropy, advantages, is_demo, **inputs):
        return losses.mixed_policy_token_loss(logps, old_logps, advantages, is_demo, cfg.epsilon, cfg.epsilon_high,
                                              cfg.clip_ratio, shaping_gamma=cfg.luffy_gamma)

    return trainer.policy_backward(trainer.rollouts(examples, Placement.REPLACE), luffy_loss)


METHOD = Method(name="luffy", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, preset=PRESET,
                advantage_std_eps=VERL_STD_EPS)  # the released mix_core_alg.py: (std + 1e-6)
