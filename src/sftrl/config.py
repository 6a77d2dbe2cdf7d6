"""The training config: one flat, typed dataclass; YAML recipe + ``key=value`` overrides; field checks.

Every field carries a one-line help text (``sftrl train --help-config`` prints them all). Defaults train
the built-in sandbox on a CPU in minutes; `recipes/paper-*.yaml` carry the papers' GPU settings.
This module checks each field on its own; :func:`sftrl.validate.load_config` adds what needs the
methods (presets, method names), so config imports nothing else of sftrl and methods may import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
SRFT_VARIANTS = ("paper", "released-code")
DEMO_TRUNCATIONS = ("cut", "drop", "keep")
ROLLOUT_BACKENDS = ("torch", "generate", "vllm")
# How the sandbox's training demonstrations write the doubling line (sftrl.sandbox.task): "times"
# (`10*2=20`, a `*` the base model has never seen) or "sum" (`10+10=20`, tokens it already produces).
SANDBOX_DOUBLE_FORMS = ("times", "sum")
UFT_SCHEDULES = ("uft", "questa", "prefix-rft")  # uft's hint schedules (sftrl.methods.uft)
# Fields that cannot change what a run computes (memory knobs, logging, checkpoint cadence, the
# resume switch itself): a resumed run may set them differently. Every other field must match.
RESULT_NEUTRAL_FIELDS = ("resume", "progress", "logging_steps", "save_every", "save_total_limit",
                         "micro_batch_size", "generation_batch_size", "eval_batch_size", "vllm_gpu_memory_utilization",
                         "vllm_sleep_mode", "gradient_checkpointing", "merge_lora_on_save", "logprob_chunk_size",
                         "report_to", "push_to_hub", "hub_model_id",
                         "eval_samples", "eval_temperature", "kl_from_base_examples")


def result_neutral(values: dict[str, Any]) -> set[str]:
    """The fields that cannot change a run with these config values: RESULT_NEUTRAL_FIELDS, and
    `coin_reward_prob` when no `coin` reward is used (compare writes the control's measured rate into every
    run's config, so a run is reused by a compare with or without the control)."""
    neutral = set(RESULT_NEUTRAL_FIELDS)
    if "coin" not in (values.get("reward_funcs") or []):
        neutral.add("coin_reward_prob")
    return neutral


REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
OPSD_TEACHERS = ("live", "base")
# The OPSD teacher's prompt (arXiv 2601.18734, Fig. 2) as a NeMo-RL on-policy distillation example writes it
# (its DEFAULT_DISTILLATION_TEACHER_BIAS_TEMPLATE, read through a code search; its file path was not recorded).
OPSD_TEMPLATE = ("Problem:\n{prompt}\n\nHere is a reference solution:\n{demonstration}\n\n"
                 "After understanding the reference solution, please try to solve this problem\n"
                 "using your own approach below:\nAnswer:\n")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # --- what to train -------------------------------------------------------------------------
    method: str = _f("sasr", "Training method: sasr, srft, luffy, hpt, relift, chord, gac, uft, dft, asft, opsd, opd, sft, grpo, sft-then-grpo, grpo-then-sft or static (see README, Methods).")
    model: str = _f("sandbox", "Hugging Face hub id or local directory of a causal LM; 'sandbox' = the prepared sandbox base model.")
    tokenizer: str | None = _f(None, "Tokenizer id or directory; default: the model's.")
    trust_remote_code: bool = _f(False, "Allow custom modelling code from the model repository.")
    dtype: str = _f("auto", "Weights dtype: auto (float32; bf16 compute comes from mixed_precision), float32, bfloat16, float16.")
    mixed_precision: str = _f("auto", "Autocast: auto (bf16 on a GPU that supports it, none on CPU), no, bf16, fp16. "
                              "On a CPU run bf16 is opt-in (auto stays none until its parity with float32 is "
                              "shown) and refused on a CPU without bfloat16 instructions (AVX512-BF16, AMX or Arm "
                              "BF16), where torch emulates it, slower than float32.")
    seed: int = _f(0, "Seed for model init (sandbox), data order, sampling and method randomness.")

    # --- data ----------------------------------------------------------------------------------
    train_data: str = _f("sandbox", "Training data: 'sandbox' (or another registered data source), a .jsonl/.json/.parquet file, a save_to_disk directory or a hub dataset id.")
    train_split: str = _f("train", "Split of train_data (for directories and hub datasets).")
    eval_data: str | None = _f("auto", "Evaluation data for accuracy before/during/after training; 'auto' = the training data source's own evaluation split (sandbox:test for the sandbox), none otherwise; null = none.")
    eval_split: str = _f("test", "Split of eval_data.")
    prompt_field: str = _f("prompt", "Column holding the prompt (text or chat messages); dotted paths reach into nested columns.")
    answer_field: str = _f("answer", "Column holding the gold answer; verl's reward_model.ground_truth is found automatically.")
    demo_field: str = _f("demonstration", "Column holding the demonstration (a reference solution) for SFT terms.")
    system_prompt: str | None = _f(None, "System prompt added to plain-text prompts.")
    chat_template_kwargs: dict[str, Any] | None = _f(None, "Extra arguments of tokenizer.apply_chat_template wherever prompts are rendered (training, evaluation), e.g. {enable_thinking: false} for Qwen3.")
    max_train_examples: int | None = _f(None, "Use only the first N training rows.")
    max_eval_examples: int | None = _f(200, "Evaluate on the first N rows of eval_data.")
    eval_reward: str | None = _f(None, "Grader of evaluations during training; null = the task's verifier (sandbox, option letter when the gold is one, math-verify otherwise), never the training reward. A name or module:function forces one.")
    sandbox_demo_error_rate: float = _f(0.0, "Sandbox regime: fraction of training demonstrations made wrong (one slipped step), to study demonstration quality.")
    sandbox_skill_share: float = _f(0.3, "Sandbox regime: share of training problems that need the doubling skill only demonstrations teach (evaluation splits keep 0.3).")
    sandbox_train_size: int = _f(5000, "Sandbox regime: number of training problems, each with its demonstration.")
    sandbox_double_form: str = _f("times", "Sandbox regime: how training demonstrations write the doubling line: times (10*2=20, new tokens) or sum (10+10=20, familiar tokens), to separate a new procedure from new tokens.")
    reward_funcs: list[str] = _f(["auto"], "Reward functions (TRL's signature): math, choice, sandbox, a name a plugin registered, module:function or file.py:function; auto = the training data source's verifier (sandbox for the sandbox), math otherwise.")
    coin_reward_prob: float = _f(0.5, "Chance that the `coin` reward pays 1: a negative control whose reward is a seeded coin, unrelated to the completion (reward_funcs=[coin]); `sftrl compare` sets it to the base model's measured pass rate for its grpo-random row.")
    reward_weights: list[float] | None = _f(None, "One weight per reward function (default all 1.0), as in TRL.")
    demo_truncation: str = _f("cut", "Demonstrations longer than max_completion_length: cut (train on the first max_completion_length tokens), drop (leave those rows out) or keep (train on them whole); counts are printed at start.")
    plugins: list[str] = _f([], "Python modules imported before anything is looked up; they register rewards, datasets or models with sftrl.registry (as the sandbox does).")

    # --- optimisation --------------------------------------------------------------------------
    max_steps: int = _f(100, "Optimizer steps to train.")
    max_train_sequences: int = _f(0, "Stop after the first step at which the sequences trained on (every row through a training forward/backward: demonstrations and rollouts; logged as total_train_sequences) reach this count, or at max_steps, whichever comes first; 0 = no sequence budget (`sftrl compare --budget sequences`).")
    max_token_passes: int = _f(0, "Stop after the first step at which the run's token passes (generated tokens plus the prompt and target tokens of every sequence through a training forward/backward; logged as total_token_passes) reach this count, or at max_steps, whichever comes first; 0 = no token budget. `sftrl compare --budget tokens` sets it so every method is charged what its steps cost.")
    batch_size: int = _f(32, "Prompts per optimizer step with a policy-gradient term (each with num_generations rollouts); SFT-only steps take sft_batch_size demonstrations.")
    sft_batch_size: int | None = _f(None, "Demonstrations per SFT-only step (SFT, and the SFT steps of SASR, SFT→GRPO, GRPO→SFT, static alternate/probability) and per ReLIFT SFT update; null = batch_size. The papers' SFT stages use their own batch (e.g. 64).")
    micro_batch_size: int = _f(64, "Sequences per forward/backward pass; accumulation over micro-batches gives the same gradient as one big batch.")
    learning_rate: float = _f(1e-4, "Peak AdamW learning rate of every step with a policy-gradient term (GRPO, LUFFY, SRFT, weighted mixtures); SFT-only steps use sft_learning_rate. Sandbox default; the papers use 1e-6 on 7B models.")
    sft_learning_rate: float | None = _f(None, "Peak learning rate of SFT-only steps (SFT, and the SFT steps of SASR, SFT→GRPO, GRPO→SFT, static alternate/probability) and of ReLIFT's SFT updates; null = learning_rate. SFT tolerates higher rates than RL (the papers: SFT 5e-5, RL 1e-6 at 7B).")
    lr_scheduler: str = _f("cosine", "Learning-rate schedule after warm-up: constant or cosine.")
    warmup_steps: int = _f(0, "Linear learning-rate warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient L2 norm to this value (0 = no clipping).")
    max_nonfinite_steps: int = _f(3, "A step whose loss or gradient is NaN/inf is skipped (no update, counted in skipped_steps); this many in a row stop the run, keeping the last good checkpoint.")
    skip_update_grad_norm: float = _f(0.0, "Skip the update (counted in skipped_steps) when the gradient norm before clipping exceeds this; 0 = never (HPT's released scripts: 80).")
    sft_steps: int = _f(50, "sft-then-grpo: number of SFT steps before switching to GRPO (unless sft_epochs is set).")
    sft_epochs: float | None = _f(None, "sft-then-grpo: length of the SFT stage in passes over the training rows, ceil(epochs·rows/sft_batch_size) steps (arXiv 2604.23747: 3); null = sft_steps.")
    rl_steps: int | None = _f(None, "sft-then-grpo: steps of the RL stage; the run then has SFT stage + rl_steps steps in all; null = max_steps in all.")
    sft_lr_scheduler: str | None = _f(None, "sft-then-grpo: schedule of the SFT stage over its own steps, constant or cosine (arXiv 2604.23747: cosine); null = lr_scheduler. The RL stage restarts lr_scheduler with warmup_steps.")
    sft_warmup_ratio: float | None = _f(None, "sft-then-grpo: linear warm-up of the SFT stage as a fraction of its steps (arXiv 2604.23747: 0.1); null = warmup_steps steps.")
    sft_min_lr_ratio: float = _f(0.0, "sft-then-grpo: the SFT stage's cosine decays to this fraction of sft_learning_rate (arXiv 2604.23747: 0.1).")
    stage_reset_optimizer: bool = _f(True, "sft-then-grpo: start the RL stage with fresh AdamW moments, as the separate RL job of arXiv 2604.23747 does; false carries them over.")
    grpo_steps: int = _f(50, "grpo-then-sft: number of GRPO steps before switching to SFT.")
    sft_kl_coef: float = _f(0.0, "grpo-then-sft: weight λ of the exact KL(π_θ‖π_RL-end) added to the SFT steps (RL→SFT_KL, SRFT Table 1).")

    # --- memory: LoRA, checkpointing, chunking (names as in TRL) -------------------------------
    use_peft: bool = _f(False, "Train LoRA adapters (PEFT) instead of every weight; the KL's reference is the base with the adapters switched off, no second copy (pip install 'sftrl[peft]').")
    lora_r: int = _f(16, "use_peft: LoRA rank.")
    lora_alpha: int = _f(32, "use_peft: LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.05, "use_peft: dropout on the LoRA branch's input.")
    lora_target_modules: list[str] | None = _f(None, "use_peft: module names to adapt, or [all-linear]; null = PEFT's default for the architecture (q_proj, v_proj for Llama/Qwen).")
    merge_lora_on_save: bool = _f(False, "use_peft: besides the adapter in output_dir/model, write the base with the adapter merged in to output_dir/model-merged (what vLLM and plain from_pretrained load).")
    gradient_checkpointing: bool = _f(False, "Recompute each layer's activations in backward instead of keeping them: much less activation memory for about a third more compute; use it on GPUs for long completions or large micro-batches (rows then run whole, without the shared-prompt forward).")
    logprob_chunk_size: int = _f(0, "Target tokens whose logits exist at once when computing log-probabilities and entropies (the LM head runs per chunk and is recomputed in backward); 0 = the whole (B, T, V) logits at once, fine for small vocabularies (the sandbox); the paper recipes use 1024. Not supported under FSDP.")

    # --- hybrid methods (see docs/ALGORITHMS.md) -----------------------------------------------
    sasr_warmup_steps: int = _f(20, "sasr: SFT warm-up steps W; the last one's gradient norm is G_warmup (SASR, arXiv 2505.13026; paper value unknown).")
    sasr_gamma: float = _f(1.0, "sasr: γ in p_t = G_sft / (G_sft + γ·G_warmup); larger γ means fewer SFT steps (paper value unknown).")
    sasr_reference: str = _f("initial", "sasr: reference model of the KL: 'initial' (before training) or 'warmup' (after the warm-up).")
    sasr_rule: str = _f("sftrl.methods.sasr:switch_probability", "sasr: the step rule (g_sft, g_warmup, gamma) -> p_t, as module:function or file.py:function.")
    srft_variant: str = _f("paper", "srft: 'paper' (w_SFT = 0.5·exp(-H), demo term -A·π) or 'released-code' (w_SFT = 0.5·exp(+H), demo term shaped p/(p+0.1)) (SRFT, arXiv 2506.19767).")
    luffy_gamma: float = _f(0.1, "luffy: γ of the policy shaping f(p) = p/(p+γ) on demonstration tokens (LUFFY, arXiv 2504.14945).")
    static_mode: str = _f("alternate", "static: alternate (k SFT then m GRPO steps), probability (SFT with probability p) or weighted (μ·SFT + (1-μ)·GRPO).")
    static_sft_steps: int = _f(1, "static alternate: k, SFT steps per cycle.")
    static_grpo_steps: int = _f(1, "static alternate: m, GRPO steps per cycle.")
    static_sft_prob: float = _f(0.5, "static probability: p, chance that a step is SFT.")
    static_sft_weight: float = _f(0.5, "static weighted: μ, weight of the SFT loss (GRPO gets 1-μ).")
    hpt_gate: int = _f(0, "hpt: γ; a prompt with at most γ correct rollouts (reward >= 1) of G gets SFT on its demonstration, the others GRPO (HPT, arXiv 2509.04419: 0 for Qwen, 2 for Llama).")
    hpt_sft_coef: float = _f(1.0, "hpt: c, coefficient of the SFT term, L = (|B_RL|/|B|)·L_GRPO + c·(|B_SFT|/|B|)·L_SFT (HPT released scripts: 1; 0.3 for Qwen2.5-Math-1.5B).")
    relift_sft_weight_decay: float = _f(0.01, "relift: weight decay of the separate AdamW of the SFT updates, which step at sft_learning_rate on sft_batch_size buffered prompts (ReLIFT, arXiv 2506.07527: 0.01).")
    relift_sft_max_grad_norm: float = _f(1.0, "relift: gradient-norm clip of the SFT updates (ReLIFT: 1.0).")
    relift_sft_entropy_coef: float = _f(0.001, "relift: the SFT updates minimise L_SFT - coef·(mean token entropy) (ReLIFT: 0.001).")
    expert_data_ratio: float = _f(0.2, "chord, gac: ρ, share of a step's rows that are demonstrations drawn apart from the RL prompts, round(ρ/(1-ρ)·batch_size·num_generations) of them (CHORD, arXiv 2508.11408: 0.2; Trinity-RFT's name).")
    chord_phi: bool = _f(True, "chord, gac: weight the SFT term's tokens by φ = sg(p(1-p)) (CHORD-φ, arXiv 2508.11408); false = plain NLL (CHORD-μ).")
    chord_mu_peak: float = _f(0.1, "chord: μ_p, the SFT weight after warm-up, L = (1-μ)·L_GRPO + μ·L_SFT (CHORD-φ: 0.1 fixed; CHORD-μ: 0.9); gac: its prior's peak.")
    chord_mu_valley: float = _f(0.1, "chord: μ_v, the SFT weight after the cosine decay (CHORD-φ: 0.1; CHORD-μ: 0.05); gac: its prior's valley.")
    chord_mu_warmup_steps: int = _f(0, "chord: W, steps of the linear rise of μ from 0 to μ_p (CHORD-μ: 0); gac: its prior's.")
    chord_mu_decay_steps: int = _f(200, "chord: T_d, steps of the cosine decay of μ from μ_p to μ_v (CHORD §4.3: 200); gac: its prior's.")
    gac_update_every: int = _f(10, "gac: f, steps between updates of the controller's statistics, from the first step on (GAC, arXiv 2605.26184, code default 10).")
    gac_mu_init: float = _f(0.5, "gac: μ_0, the SFT weight before the controller has moved it (code default 0.5).")
    gac_mu_min: float = _f(0.05, "gac: lower bound of μ (code default 0.05).")
    gac_mu_max: float = _f(0.9, "gac: upper bound of μ (code default 0.9).")
    gac_mu_change_cap: float = _f(0.01, "gac: c̄, the most μ may change in one step (code default 0.01).")
    gac_alpha: float = _f(0.5, "gac: α in μ* = (α·Δg² + σ_r²)/(Δg² + σ_s² + σ_r²), kept constant (code default 0.5).")
    gac_ema: float = _f(0.99, "gac: b, EMA weight on the old value, of the statistics and of μ (code default 0.99).")
    gac_prior_weight: float = _f(1.0, "gac: λ, μ_c = (1-λ)·prior(t) + λ·μ_adaptive, prior = CHORD's schedule (chord_mu_*); 1 = no prior (code default; README example 0.5).")
    gac_trim_ratio: float = _f(0.1, "gac: share of the lowest and of the highest demonstration NLLs dropped before σ_s² (code default 0.1).")
    gac_delta_g2_cap: float = _f(0.0, "gac: κ, cap Δg² <= κ·(σ_s² + σ_r²); 0 = no cap (code default).")
    uft_hint_steps: int = _f(300, "uft: T_hint, steps over which the hint shrinks by a cosine; none after (UFT, arXiv 2505.16984, released code: 300 of 500); questa: stage 1's length; prefix-rft: low_t's cosine's.")
    uft_hint_prob_high: float = _f(0.95, "uft: p_hi, the chance that each hint block is given at step 0 (released code: 0.95).")
    uft_hint_prob_low: float = _f(0.05, "uft: p_lo, that chance at step T_hint (released code: 0.05).")
    uft_hint_blocks: int = _f(5, "uft: K, the demonstration's solution steps are grouped into min(K, steps) hint blocks (released code: 5).")
    uft_hint_coef: float = _f(0.001, "uft: c_h, weight of the token-mean NLL of the hint tokens added to the GRPO loss (released code: 0.001).")
    uft_step_separator: str = _f("\n", "uft: separator of a demonstration's solution steps; the last segment is the answer and never a hint.")
    asft_kl_coef: float = _f(0.03, "asft: λ, weight of the k3 KL(π_θ‖π_ref) on demonstration tokens added to the DFT loss (ASFT, arXiv 2509.23753; NeMo-RL's kl_weight: 0.03); 0 = DFT.")
    asft_kl_input_clamp: float | None = _f(20.0, "asft: clamp of log π_ref - log π_θ to ±this before the k3 (NeMo-RL's kl_input_clamp_value: 20); null = none.")
    asft_kl_output_clamp: float | None = _f(10.0, "asft: clamp of each token's k3 to ±this (NeMo-RL's kl_output_clamp_value: 10); null = none.")
    opsd_teacher: str = _f("live", "opsd: the teacher's weights: live (the current policy, no gradient: OPSD's p_θ(· ∣ x, y*), arXiv 2601.18734) or base (the model as loaded, frozen: TRL SDFTConfig's default).")
    opsd_teacher_template: str = _f(OPSD_TEMPLATE, "opsd: the teacher's user message, {prompt} and {demonstration} filled in (OPSD, arXiv 2601.18734, Fig. 2, as NeMo-RL's DEFAULT_DISTILLATION_TEACHER_BIAS_TEMPLATE writes it).")
    opd_teacher: str | None = _f(None, "opd: the teacher model, a local directory or hub id, loaded like `model` and frozen; it must share the policy's tokenizer (GKD, arXiv 2306.13649).")
    distill_reward_coef: float = _f(0.0, "opsd, opd: w in the per-token advantage log π_T - log π_θ + w·A, A the task reward's GRPO advantage (verl's use_task_rewards); 0 = pure distillation.")
    uft_schedule: str = _f("uft", "uft: hint schedule: uft (UFT's cosine over blocks), questa (QuestA, arXiv 2507.13266: a solution prefix in the question) or prefix-rft (Prefix-RFT, arXiv 2507.01679: one extra rollout per group continues a prefix); see ALGORITHMS.md.")
    uft_prefix_high: float | None = _f(None, "uft questa: stage 1's share of the solution in the hint (QuestA: 0.5); prefix-rft: the prefix share's upper bound and low_t's start (Prefix-RFT: 0.95); null: those.")
    uft_prefix_low: float | None = _f(None, "uft questa: stage 2's share, after uft_hint_steps (QuestA: 0.25); prefix-rft: low_t at uft_hint_steps and after (Prefix-RFT: 0.05); null: those.")
    uft_entropy_top: float = _f(0.2, "uft prefix-rft: share of a micro-batch's prefix tokens, highest entropy first, that keep their advantage; the rest get 0 (Prefix-RFT: top 20%).")

    # --- rollouts and GRPO (names as in TRL) ---------------------------------------------------
    num_generations: int = _f(8, "Rollouts sampled per prompt (G, the GRPO group size).")
    max_prompt_length: int | None = _f(None, "Keep only the last N prompt tokens (null = no truncation).")
    max_completion_length: int = _f(64, "Maximum tokens per completion; longer ones are truncated.")
    temperature: float = _f(1.0, "Sampling temperature of rollouts (also scales the logits of the GRPO loss, as in TRL).")
    top_p: float = _f(1.0, "Nucleus sampling threshold of rollouts.")
    generation_batch_size: int = _f(256, "Sequences sampled together (memory knob; results do not depend on it on CPU).")
    rollout_backend: str = _f("torch", "How rollouts are sampled: torch (sftrl's decode loop on the training model: each prompt prefilled once per group, finished rows leave the batch), generate (transformers' generate) or vllm (a vLLM engine colocated on the GPU, the policy's weights loaded into it before each generation; pip install 'sftrl[vllm]'). All draw from the same distribution.")
    min_completion_length: int = _f(0, "Tokens sampled before an EOS may end a completion (EOS masked until then, as transformers' min_new_tokens). Above 0 the samples no longer follow the loss's softmax; benchmarks/grpo_step.py --fixed-length sets it to max_completion_length.")
    vllm_gpu_memory_utilization: float = _f(0.3, "rollout_backend=vllm: share of the GPU's memory vLLM takes for its weights and KV cache (TRL's colocate default).")
    vllm_sleep_mode: bool = _f(True, "rollout_backend=vllm: release vLLM's GPU memory (weights and KV cache) between generations, so training has it (TRL's vllm_enable_sleep_mode).")
    beta: float = _f(0.0, "KL(π_θ‖π_ref) coefficient, k3 estimator (DeepSeekMath Eq. 4); 0 loads no reference model.")
    epsilon: float = _f(0.2, "Lower clipping range ε of the ratio (PPO/GRPO).")
    epsilon_high: float | None = _f(None, "Upper clipping range (DAPO's clip-higher, arXiv 2503.14476); default = epsilon.")
    loss_type: str = _f("dapo", "Loss normaliser: grpo (sequence mean), dapo/bnpo (token mean over the step; TRL's bnpo means per micro-batch instead), dr_grpo (sum / (sequences·max_completion_length)).")
    scale_rewards: str = _f("group", "Advantage scaling: group std, batch std or none (Dr. GRPO).")
    advantage_std_eps: float | None = _f(None, "ε of the advantage (r - mean)/(std + ε); null = the method's reference code: 1e-4 (TRL) for GRPO and the TRL-based methods, 1e-6 (verl, Trinity-RFT) for chord, gac, hpt and luffy.")
    mask_truncated_completions: bool = _f(False, "Exclude truncated completions from the loss (DAPO).")
    clip_ratio: bool = _f(True, "Clip the ratio π_θ/π_old to [1-ε, 1+ε_high]; LUFFY's released code trains without clipping.")
    entropy_coef: float = _f(0.0, "Entropy bonus: subtracts coef · (mean token entropy over the step's rollout and in-group demonstration tokens) from the loss, whatever the loss_type, as TRL does (LUFFY and SRFT use 0.001).")

    # --- evaluation, logging, checkpoints ------------------------------------------------------
    output_dir: str = _f("runs/{method}-seed{seed}", "Run directory; {method} and {seed} are filled in.")
    eval_every: int = _f(0, "Evaluate every N steps (0 = only before and after training).")
    eval_batch_size: int = _f(128, "Prompts per generate() call during evaluation.")
    eval_samples: int = _f(4, "Evaluations during training also sample this many completions per prompt at eval_temperature and report their mean accuracy (avg@k, eval/sampled_accuracy, the headline: greedy accuracy on the sandbox flips with the base model's near 50/50 first-token choice); 0 = greedy accuracy only. Drawn from a generator of their own: training is the same whatever this is.")
    eval_temperature: float = _f(0.6, "Sampling temperature of eval_samples (the papers' evaluation protocol: 0.6).")
    kl_from_base_examples: int = _f(8, "Evaluations also log kl_from_base, the forward KL(π_base ‖ π_θ) per token on the first N eval rows' demonstrations (RL's Razor, arXiv 2509.04259: it tracks forgetting); the base's top-256 log-probs are computed once at the start; 0 = off.")
    logging_steps: int = _f(1, "Write metrics every N steps.")
    save_every: int = _f(50, "Write a checkpoint every N steps (0 = only the final model).")
    save_total_limit: int = _f(2, "Keep the newest N checkpoints.")
    resume: bool = _f(False, "Continue from the newest checkpoint in output_dir.")
    report_to: list[str] = _f(["none"], "Trackers that also get the logged metrics (through accelerate): none, tensorboard, wandb, trackio; their files go under output_dir/trackers.")
    push_to_hub: bool = _f(False, "Upload the final model (model-merged when merge_lora_on_save) to the Hugging Face hub after training.")
    hub_model_id: str | None = _f(None, "push_to_hub: the hub repository, user/name; null = the run directory's name under your account.")
    progress: bool = _f(True, "Show a progress bar.")

    @property
    def sft_batch(self) -> int:
        """Demonstrations per SFT-only step."""
        return self.batch_size if self.sft_batch_size is None else self.sft_batch_size

    @property
    def sft_lr(self) -> float:
        """The peak learning rate of SFT-only steps."""
        return self.learning_rate if self.sft_learning_rate is None else self.sft_learning_rate

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(method=self.method, seed=self.seed))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_help() -> dict[str, str]:
    """name -> help text, in declaration order."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's type annotation, converting ints to floats where a float is asked."""
    hint = typing.get_type_hints(Config)[name] if isinstance(annotation, str) else annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name}: expected a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is str and isinstance(value, bool):  # YAML 1.1 reads no/yes/on/off as booleans
        raise ConfigError(f"{name}: expected a string, got {value!r} (YAML reads no, yes, on and off as "
                          f"true/false: quote the value, e.g. {name}: 'no')")
    raise ConfigError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _unknown(name: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(Config)]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (sftrl train --help-config lists them)"
    return ConfigError(f"unknown config field {name!r}{hint}")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict; values are read as YAML (so 1e-6, true, null and [a, b] work), except
    that a string field keeps the text as typed (`mixed_precision=no` is "no", not YAML's false)."""
    hints = typing.get_type_hints(Config)
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        name, raw = item.split("=", 1)
        key, text = name.strip(), raw.strip()
        hint = hints.get(key)
        null = hint == str | None and text in ("null", "~")  # an optional text field set to none
        if hint in (str, str | None) and text and not null:
            parsed[key] = yaml.safe_load(text) if text[0] in "'\"" else text
            continue
        try:
            parsed[key] = yaml.safe_load(raw) if text else ""
        except yaml.YAMLError:
            parsed[key] = raw
    return parsed


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """A recipe's YAML mapping; a missing file or bad YAML is one line naming the file (and line)."""
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        with path.open(encoding="utf-8") as stream:
            loaded = yaml.safe_load(stream) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {exc.problem or exc.context}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of config fields")
    return loaded


def build_config(values: dict[str, Any]) -> Config:
    """A Config from field values (unknown names and wrong types are errors), each field checked."""
    known = {f.name for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            raise _unknown(name)
        kwargs[name] = _coerce(name, value, hints[name])
    config = Config(**kwargs)
    check_fields(config)
    return config


def check_fields(c: Config) -> None:
    """Range and choice checks of each field on its own; each error names the field and the allowed values."""

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check(c.loss_type in LOSS_TYPES, f"loss_type: {c.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    check(c.scale_rewards in SCALE_REWARDS, f"scale_rewards: {c.scale_rewards!r} is not one of {', '.join(SCALE_REWARDS)}")
    check(c.lr_scheduler in ("constant", "cosine"), f"lr_scheduler: {c.lr_scheduler!r} is not constant or cosine")
    check(c.sft_lr_scheduler in (None, "constant", "cosine"),
          f"sft_lr_scheduler: {c.sft_lr_scheduler!r} is not constant, cosine or null")
    check(c.dtype in ("auto", "float32", "bfloat16", "float16"), f"dtype: {c.dtype!r} is not auto, float32, bfloat16 or float16")
    check(c.mixed_precision in ("auto", "no", "bf16", "fp16"), f"mixed_precision: {c.mixed_precision!r} is not auto, no, bf16 or fp16")
    for name in ("max_steps", "batch_size", "micro_batch_size", "num_generations", "max_completion_length",
                 "generation_batch_size", "eval_batch_size", "logging_steps", "save_total_limit"):
        check(getattr(c, name) >= 1, f"{name}: must be at least 1, got {getattr(c, name)}")
    for name in ("warmup_steps", "sft_steps", "grpo_steps", "static_sft_steps", "static_grpo_steps", "eval_every",
                 "save_every", "hpt_gate", "chord_mu_warmup_steps", "chord_mu_decay_steps", "uft_hint_steps",
                 "kl_from_base_examples"):
        check(getattr(c, name) >= 0, f"{name}: must be 0 or more, got {getattr(c, name)}")
    for name in ("max_prompt_length", "max_train_examples", "max_eval_examples", "sft_batch_size", "rl_steps"):
        value = getattr(c, name)
        check(value is None or value >= 1, f"{name}: must be at least 1 or null, got {value}")
    check(0 < c.learning_rate < float("inf"), f"learning_rate: must be positive and finite, got {c.learning_rate}")
    check(c.sft_learning_rate is None or 0 < c.sft_learning_rate < float("inf"),
          f"sft_learning_rate: must be positive and finite or null, got {c.sft_learning_rate}")
    check(c.rollout_backend in ROLLOUT_BACKENDS,
          f"rollout_backend: {c.rollout_backend!r} is not one of {', '.join(ROLLOUT_BACKENDS)}")
    check(0 <= c.min_completion_length <= c.max_completion_length,
          f"min_completion_length: must be in [0, max_completion_length={c.max_completion_length}], got {c.min_completion_length}")
    check(0 < c.vllm_gpu_memory_utilization <= 1,
          f"vllm_gpu_memory_utilization: must be in (0, 1], got {c.vllm_gpu_memory_utilization}")
    check(c.temperature > 0, f"temperature: must be positive, got {c.temperature}")
    check(0 < c.top_p <= 1, f"top_p: must be in (0, 1], got {c.top_p}")
    check(c.beta >= 0, f"beta: must be 0 or more, got {c.beta}")
    check(c.advantage_std_eps is None or c.advantage_std_eps >= 0,
          f"advantage_std_eps: must be 0 or more or null, got {c.advantage_std_eps}")
    check(c.epsilon >= 0, f"epsilon: must be 0 or more, got {c.epsilon}")
    check(c.epsilon_high is None or c.epsilon_high >= 0, f"epsilon_high: must be 0 or more, got {c.epsilon_high}")
    check(c.max_grad_norm >= 0, f"max_grad_norm: must be 0 or more, got {c.max_grad_norm}")
    check(c.weight_decay >= 0, f"weight_decay: must be 0 or more, got {c.weight_decay}")
    check(0 <= c.sandbox_demo_error_rate <= 1, f"sandbox_demo_error_rate: must be in [0, 1], got {c.sandbox_demo_error_rate}")
    check(0 <= c.sandbox_skill_share <= 1, f"sandbox_skill_share: must be in [0, 1], got {c.sandbox_skill_share}")
    check(c.max_train_sequences >= 0, f"max_train_sequences: must be 0 (no sequence budget) or positive, got {c.max_train_sequences}")
    check(c.max_token_passes >= 0, f"max_token_passes: must be 0 (no token budget) or positive, got {c.max_token_passes}")
    check(c.eval_samples >= 0, f"eval_samples: must be 0 (greedy only) or positive, got {c.eval_samples}")
    check(c.eval_temperature > 0, f"eval_temperature: must be positive, got {c.eval_temperature}")
    check(0 <= c.coin_reward_prob <= 1, f"coin_reward_prob: must be in [0, 1], got {c.coin_reward_prob}")
    check(c.sandbox_train_size >= 1, f"sandbox_train_size: must be at least 1, got {c.sandbox_train_size}")
    check(c.sandbox_double_form in SANDBOX_DOUBLE_FORMS,
          f"sandbox_double_form: {c.sandbox_double_form!r} is not one of {', '.join(SANDBOX_DOUBLE_FORMS)}")
    check(len(c.reward_funcs) >= 1, "reward_funcs: name at least one reward function")
    check(c.reward_weights is None or len(c.reward_weights) == len(c.reward_funcs),
          f"reward_weights: {c.reward_weights} has a different length than reward_funcs {c.reward_funcs}")
    check(c.sft_kl_coef >= 0, f"sft_kl_coef: must be 0 or more, got {c.sft_kl_coef}")
    check(c.entropy_coef >= 0, f"entropy_coef: must be 0 or more, got {c.entropy_coef}")
    check(c.sasr_warmup_steps >= 1, f"sasr_warmup_steps: must be at least 1 (G_warmup comes from the last warm-up step), got {c.sasr_warmup_steps}")
    check(c.sasr_gamma > 0, f"sasr_gamma: must be positive, got {c.sasr_gamma}")
    check(c.sasr_reference in ("initial", "warmup"), f"sasr_reference: {c.sasr_reference!r} is not initial or warmup")
    check(":" in c.sasr_rule, f"sasr_rule: {c.sasr_rule!r} is not of the form module:function or file.py:function")
    check(c.srft_variant in SRFT_VARIANTS, f"srft_variant: {c.srft_variant!r} is not one of {', '.join(SRFT_VARIANTS)}")
    check(c.luffy_gamma > 0, f"luffy_gamma: must be positive, got {c.luffy_gamma}")
    check(c.static_mode in ("alternate", "probability", "weighted"),
          f"static_mode: {c.static_mode!r} is not alternate, probability or weighted")
    check(c.method != "static" or c.static_mode != "alternate" or c.static_sft_steps + c.static_grpo_steps >= 1,
          "static_sft_steps + static_grpo_steps: a cycle needs at least one step")
    check(0 <= c.static_sft_prob <= 1, f"static_sft_prob: must be in [0, 1], got {c.static_sft_prob}")
    check(0 <= c.static_sft_weight <= 1, f"static_sft_weight: must be in [0, 1], got {c.static_sft_weight}")
    check(c.sft_epochs is None or c.sft_epochs > 0, f"sft_epochs: must be positive or null, got {c.sft_epochs}")
    check(c.sft_warmup_ratio is None or 0 <= c.sft_warmup_ratio < 1,
          f"sft_warmup_ratio: must be in [0, 1) or null, got {c.sft_warmup_ratio}")
    check(c.method != "hpt" or c.hpt_gate < c.num_generations,
          f"hpt_gate: must be below num_generations={c.num_generations} (at {c.hpt_gate} every prompt goes to SFT)")
    check(0 <= c.expert_data_ratio < 1, f"expert_data_ratio: must be in [0, 1), got {c.expert_data_ratio}")
    for name in ("sft_min_lr_ratio", "chord_mu_peak", "chord_mu_valley", "gac_mu_init", "gac_mu_min", "gac_mu_max",
                 "gac_alpha", "gac_prior_weight", "uft_hint_prob_high", "uft_hint_prob_low"):
        check(0 <= getattr(c, name) <= 1, f"{name}: must be in [0, 1], got {getattr(c, name)}")
    for name in ("skip_update_grad_norm", "hpt_sft_coef", "relift_sft_weight_decay", "relift_sft_max_grad_norm",
                 "relift_sft_entropy_coef", "gac_mu_change_cap", "gac_delta_g2_cap", "uft_hint_coef"):
        check(getattr(c, name) >= 0, f"{name}: must be 0 or more, got {getattr(c, name)}")
    check(c.gac_mu_min <= c.gac_mu_init <= c.gac_mu_max,
          f"gac_mu_init: must lie in [gac_mu_min, gac_mu_max] = [{c.gac_mu_min}, {c.gac_mu_max}], got {c.gac_mu_init}")
    check(c.gac_update_every >= 1, f"gac_update_every: must be at least 1, got {c.gac_update_every}")
    check(0 <= c.gac_ema < 1, f"gac_ema: must be in [0, 1), got {c.gac_ema}")
    check(0 <= c.gac_trim_ratio < 0.5, f"gac_trim_ratio: must be in [0, 0.5), got {c.gac_trim_ratio}")
    check(c.uft_hint_prob_low <= c.uft_hint_prob_high,
          f"uft_hint_prob_low: must not exceed uft_hint_prob_high={c.uft_hint_prob_high}, got {c.uft_hint_prob_low}")
    check(c.uft_hint_blocks >= 1, f"uft_hint_blocks: must be at least 1, got {c.uft_hint_blocks}")
    check(c.uft_step_separator != "", "uft_step_separator: must not be empty")
    check(c.asft_kl_coef >= 0, f"asft_kl_coef: must be 0 or more, got {c.asft_kl_coef}")
    for name in ("asft_kl_input_clamp", "asft_kl_output_clamp"):
        check(getattr(c, name) is None or getattr(c, name) > 0, f"{name}: must be positive or null, got {getattr(c, name)}")
    check(c.opsd_teacher in OPSD_TEACHERS, f"opsd_teacher: {c.opsd_teacher!r} is not one of {', '.join(OPSD_TEACHERS)}")
    check("{prompt}" in c.opsd_teacher_template and "{demonstration}" in c.opsd_teacher_template,
          "opsd_teacher_template: must contain both {prompt} and {demonstration}")
    check(c.method != "opd" or bool(c.opd_teacher and c.opd_teacher.strip()),
          "opd_teacher: name the teacher model (a local directory or hub id) that method opd distils from")
    check(c.uft_schedule in UFT_SCHEDULES, f"uft_schedule: {c.uft_schedule!r} is not one of {', '.join(UFT_SCHEDULES)}")
    for name in ("uft_prefix_high", "uft_prefix_low"):
        value = getattr(c, name)
        check(value is None or 0 <= value <= 1, f"{name}: must be in [0, 1] or null, got {value}")
    check(c.uft_prefix_low is None or c.uft_prefix_high is None or c.uft_prefix_low <= c.uft_prefix_high,
          f"uft_prefix_low: must not exceed uft_prefix_high={c.uft_prefix_high}, got {c.uft_prefix_low}")
    check(0 < c.uft_entropy_top <= 1, f"uft_entropy_top: must be in (0, 1], got {c.uft_entropy_top}")
    check(0 <= c.adam_beta1 < 1, f"adam_beta1: must be in [0, 1), got {c.adam_beta1}")
    check(0 <= c.adam_beta2 < 1, f"adam_beta2: must be in [0, 1), got {c.adam_beta2}")
    check(c.max_nonfinite_steps >= 1, f"max_nonfinite_steps: must be at least 1, got {c.max_nonfinite_steps}")
    check(c.lora_r >= 1, f"lora_r: must be at least 1, got {c.lora_r}")
    check(c.lora_alpha >= 1, f"lora_alpha: must be at least 1, got {c.lora_alpha}")
    check(0 <= c.lora_dropout < 1, f"lora_dropout: must be in [0, 1), got {c.lora_dropout}")
    check(c.lora_target_modules is None or (len(c.lora_target_modules) >= 1 and all(c.lora_target_modules)),
          f"lora_target_modules: name at least one module (or null for PEFT's default), got {c.lora_target_modules}")
    check(c.logprob_chunk_size >= 0, f"logprob_chunk_size: must be 0 (off) or more, got {c.logprob_chunk_size}")
    check(all(name in REPORT_TO for name in c.report_to) and c.report_to,
          f"report_to: {c.report_to} is not a list of {', '.join(REPORT_TO)}")
    check(c.hub_model_id is None or c.hub_model_id.count("/") <= 1 and c.hub_model_id.strip("/") != "",
          f"hub_model_id: {c.hub_model_id!r} is not of the form name or user/name")
    check(c.demo_truncation in DEMO_TRUNCATIONS,
          f"demo_truncation: {c.demo_truncation!r} is not one of {', '.join(DEMO_TRUNCATIONS)}")
    check(all(isinstance(p, str) and p.strip() for p in c.plugins), f"plugins: module names must be non-empty, got {c.plugins}")
    check(all(math.isfinite(w) for w in c.reward_weights or []), f"reward_weights: must be finite, got {c.reward_weights}")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):  # NaN and inf pass range checks such as `beta >= 0` unnoticed
        value = getattr(c, f.name)
        if float in typing.get_args(hints[f.name]) + (hints[f.name],) and isinstance(value, float):
            check(math.isfinite(value), f"{f.name}: must be a finite number, got {value}")




def markdown_reference() -> str:
    """The README's config table (`python -m sftrl.config` prints it)."""
    import json

    defaults = Config().to_dict()
    rows = [f"| `{name}` | `{json.dumps(defaults[name])}` | {text} |" for name, text in field_help().items()]
    return "\n".join(["| field | default | meaning |", "|---|---|---|", *rows])


if __name__ == "__main__":
    print(markdown_reference())
