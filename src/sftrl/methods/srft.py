"""SRFT (arXiv 2506.19767): one stage, SFT and RL in every step, weighted by the policy's entropy.

Per prompt, the G rollouts and the demonstration form one augmented group (advantages over all
G+1, Eq. 6-7). The step's loss (Eq. 13) is the sum of
- SFT on the demonstrations, weighted per token by w_SFT = 0.5·sg(exp(-H_t)) (Eq. 8);
- off-policy RL on the demonstration: -Â_d · π_θ(d_t), ratio against π_β = 1, no clipping (Eq. 9-10);
- on-policy RL on the rollouts, split by sign: A > 0 weighted by w_RL = 0.1·sg(exp(H_t)),
  A <= 0 unweighted (Eq. 11-12).
`srft_variant=released-code` follows the authors' code instead: w_SFT = 0.5·sg(exp(+H_t)) and the
demonstration term shaped as LUFFY's p/(p+0.1). The SFT term is a token mean over demonstration
tokens; the RL terms share the `loss_type` normaliser over the augmented group.
"""

from .. import losses
from ..data import Example

from .base import Method, Metrics, Placement, State, StepContext, StepKind, always, only

PRESET = {"entropy_coef": 0.001}  # the paper's entropy bonus; no KL
RELEASED_CODE_SHAPING = 0.1


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    sft = trainer.sft_backward(examples, token_weights=lambda logps, h: losses.srft_sft_weights(h, cfg.srft_variant))
    shaping = RELEASED_CODE_SHAPING if cfg.srft_variant == "released-code" else None

    def srft_loss(*, logps, old_logps, entropy, advantages, is_demo, **inputs):
        w_rl = losses.srft_rl_weights(entropy)  # (B, T)
        loss, stats = losses.mixed_policy_token_loss(
            logps, old_logps, advantages, is_demo, cfg.epsilon, cfg.epsilon_high, cfg.clip_ratio,
            shaping_gamma=shaping, positive_weights=w_rl)
        positive = (advantages > 0) & ~is_demo  # (B,)
        stats["srft/w_rl"] = w_rl.masked_fill(~positive.unsqueeze(1), float("nan"))
        return loss, stats

    rl = trainer.policy_backward(trainer.rollouts(examples, Placement.APPEND), srft_loss)
    rl["srft/w_sft"] = sft.pop("sft/mean_weight")
    return {**sft, **rl}


# Every step has a policy-gradient term, so it runs at learning_rate with batch_size prompts.
METHOD = Method(name="srft", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, preset=PRESET)
