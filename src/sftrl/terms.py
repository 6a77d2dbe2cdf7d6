"""The training terms: the SFT term over demonstrations and the policy-gradient term over rollouts (GRPO's
and the hybrids', a TokenLoss each), sharing one micro-batch accumulation loop: pack -> score -> the
term's loss -> backward on this process, with every process running as many passes. Each term is
normalised by whole-step counts over every process, so the accumulated gradient is the step's."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch

from . import losses
from .batching import TargetScores, TokenBatch, counted_tokens, micro_batches, pack, pad_rows, score_targets
from .config import Config
from .data import Example
from .methods.base import Observer, Rollouts, SFTTokenLoss, TokenLoss, TokenView
from .parallel import Parallel
from .rows import Rows

# (rows of the micro-batch, its packed batch, its scores) -> the loss to back-propagate
MicroLoss = Callable[[list[int], TokenBatch, TargetScores], torch.Tensor]


class Terms:
    """What the terms train and measure: the policy through its training module, and the reference (None,
    a frozen model, or the LoRA policy with its adapters off; snapshots replace it). Counts, on this
    process since the last reset: the loss back-propagated, and the prompt + target tokens and the
    sequences through a training forward (counted per sequence, whatever the layout)."""

    def __init__(self, config: Config, model, train_module, reference, parallel: Parallel, rows: Rows,
                 pad_id: int, idle_token: int, device: torch.device):
        self.config, self.model, self.train_module, self.reference = config, model, train_module, reference
        self.parallel, self.collective, self.rows = parallel, parallel.collective, rows
        self.pad_id, self.idle_token, self.device = pad_id, idle_token, device
        self.loss = 0.0
        self.token_passes = 0
        self.sequences = 0

    def accumulate(self, prompts: list[list[int]], targets: list[list[int]], lengths: list[int], temperature: float,
                   micro_loss: MicroLoss, **score_options) -> None:
        """The one loop: micro-batches by `lengths` (micro_batch_size), each packed, scored at `temperature`
        (batching.score_targets, chunked by logprob_chunk_size; `score_options` for the reference) and its
        micro_loss back-propagated unsynchronised (the update averages the step's gradients over processes:
        sftrl.parallel); then idle passes so that every process ran as many. Collective."""
        plan = micro_batches(lengths, self.config.micro_batch_size)
        most = self.parallel.most_passes(len(plan))
        for rows in plan:
            batch = pack([prompts[i] for i in rows], [targets[i] for i in rows], self.pad_id, self.device)
            self.token_passes += int(batch.prompt_mask.sum(dim=1)[batch.prompt_of].sum()) + int(batch.target_mask.sum())
            self.sequences += batch.targets.shape[0]
            scores = score_targets(self.train_module, batch, temperature, chunk_size=self.config.logprob_chunk_size,
                                   share_prompts=not self.parallel.sharded, **score_options)
            loss = micro_loss(rows, batch, scores)
            self.loss += float(loss.detach())  # every loss optimised passes here: the logged `loss` is their sum
            self.parallel.backward(self.model, loss)
        self.parallel.even_out(self.model, len(plan), most, self.idle_token)

    def sft(self, examples: list[Example], weight: float = 1.0,
            token_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            kl_coef: float = 0.0, targets: list[list[int]] | None = None, entropy_coef: float = 0.0,
            observe: Observer | None = None, temperature: float = 1.0,
            entropy_tokens: int | None = None, token_loss: SFTTokenLoss | None = None) -> dict[str, float]:
        """Accumulate weight · (token-mean NLL of the demonstrations); returns `sft/*` metrics.

        token_weights: (log-probs, entropy), both (B, T) -> per-token weights of the NLL, as constants
            (SRFT's w_SFT, CHORD's φ = p(1-p)).
        kl_coef: adds kl_coef · exact KL(π_θ‖π_ref) on the demonstration positions (RL→SFT_KL).
        targets: token ids trained on instead of the demonstrations, one list per example (UFT's hints).
        entropy_coef: subtracts entropy_coef · Σ H_t / entropy_tokens over the same tokens, not scaled by
            `weight` (ReLIFT's SFT update; HPT's bonus over demonstrations and rollouts).
        entropy_tokens: the bonus's normaliser over every process; None = the demonstrations' tokens.
        temperature: the logits are divided by it before the log-softmax (1 = the plain NLL; CHORD's,
            GAC's and HPT's code score demonstrations at the rollout temperature).
        observe: shown every micro-batch (detached), for statistics (GAC).
        token_loss: (log-probs with gradient, the reference's log-probs or None) -> (B, T) per-token loss
            that replaces the (weighted) NLL, reduced by the same token mean (ASFT's DFT + λ·k3).
        Collective: every process calls it with its own rows (maybe none); the token mean and the metrics
        are over every process's rows. With a reference model loaded, the KL to it is measured (`kl_ref`)
        whether or not it is trained on. Returns {} when no process had a row.
        """
        prompts = [self.rows.prompt_ids(e) for e in examples]
        demos = targets if targets is not None else [self.rows.demonstration_ids(e)[0] for e in examples]
        step_tokens = self.collective.sum(sum(len(d) for d in demos))
        reference = self.reference
        if kl_coef > 0 and reference is None:
            raise RuntimeError("sft_backward(kl_coef > 0) needs a reference model; call snapshot_reference() first")
        sums = {"nll": 0.0, "entropy": 0.0, "weight": 0.0, "kl_ref": 0.0}

        def micro_loss(rows: list[int], batch: TokenBatch, scores: TargetScores) -> torch.Tensor:
            mask = batch.target_mask
            logps, entropy = scores.logps, scores.entropy
            assert entropy is not None  # scored with_entropy, the default
            weights = token_weights(logps.detach(), entropy.detach()) if token_weights is not None else None
            if token_loss is not None:
                loss = losses.token_mean(token_loss(logps, scores.ref_logps), mask, step_tokens)
            else:
                loss = losses.sft_loss(logps, mask, step_tokens, weights)
            if reference is not None:
                kl = scores.kl  # (B, T) exact KL(π_θ‖π_ref), differentiable when trained on
                assert kl is not None  # scored against the reference
                if kl_coef > 0:
                    loss = loss + kl_coef * (kl * mask).sum() / max(step_tokens, 1)
                sums["kl_ref"] += float((kl.detach() * mask).sum())
            loss = weight * loss
            if entropy_coef:
                loss = loss - entropy_coef * losses.entropy_bonus(entropy, mask, entropy_tokens or step_tokens)
            if observe is not None:
                observe(TokenView(logps.detach(), entropy.detach(), mask,
                                  torch.ones(len(rows), dtype=torch.bool, device=mask.device), None))
            sums["nll"] += float(-(logps.detach() * mask).sum())
            sums["entropy"] += float((entropy.detach() * mask).sum())
            if weights is not None:
                sums["weight"] += float((weights * mask).sum())
            return loss

        self.accumulate(prompts, demos, [len(p) + len(d) for p, d in zip(prompts, demos)], temperature, micro_loss,
                        reference=reference, kl_grad=kl_coef > 0,
                        ref_logps=token_loss is not None and reference is not None)
        sequences, nll, ent, wsum, kl_sum = self.collective.sums(
            [len(demos), sums["nll"], sums["entropy"], sums["weight"], sums["kl_ref"]])
        if step_tokens == 0:
            return {}
        metrics = {"sft/loss": nll / step_tokens, "sft/entropy": ent / step_tokens,
                   "sft/mean_length": step_tokens / sequences}
        if token_weights is not None:
            metrics["sft/mean_weight"] = wsum / step_tokens
        if reference is not None:
            metrics["kl_ref"] = kl_sum / step_tokens
        return metrics

    def policy(self, rollouts: Rollouts, token_loss: TokenLoss, weight: float = 1.0,
               observe: Observer | None = None, entropy_tokens: int | None = None,
               entropy_coef: float | None = None) -> dict[str, float]:
        """Accumulate weight · (a policy-gradient loss over rollouts and demonstrations).

        token_loss (methods.base.TokenLoss, called with named arguments) -> (per-token loss (B, T),
        per-token stats) is the method's loss (a function of `losses`); this adds β·k3 KL on rollout tokens
        (never on demonstrations: π_θ did not sample them, and LUFFY and SRFT apply no KL to off-policy
        rows), normalises by the whole step's counts (`loss_type`), subtracts the entropy bonus
        entropy_coef · Σ H_t / entropy_tokens over every counted token (None: this call's counted tokens,
        a token mean whatever the loss_type, as TRL does; not scaled by `weight`: Trinity-RFT's CHORD and
        HPT subtract it once from the mixed loss) and logs the stats' means over rollout tokens (a stat
        that is NaN on a token is undefined there and left out of its mean). entropy_coef: None =
        config.entropy_coef (GAC's measuring pass, of weight 0, passes 0).
        observe: shown every micro-batch (detached), for statistics (GAC).
        Collective: every process calls it, with its own rows (maybe none: HPT's gate may send all of a
        process's prompts to SFT); the normalisers and the token means logged count every process's rows.
        """
        cfg = self.config
        t0 = time.perf_counter()
        n = len(rollouts.target_ids)
        excluded = rollouts.truncated.tolist() if cfg.mask_truncated_completions else [False] * n
        step_tokens, step_sequences = self.collective.sums([counted_tokens(rollouts.target_ids, excluded), n])
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        loss_total = 0.0
        reference = self.reference
        coef = cfg.entropy_coef if entropy_coef is None else entropy_coef

        def micro_loss(idx: list[int], batch: TokenBatch, scores: TargetScores) -> torch.Tensor:
            nonlocal loss_total
            device = batch.target_mask.device
            is_demo = rollouts.is_demo[idx].to(device)
            mask = batch.target_mask
            if cfg.mask_truncated_completions:
                mask = mask * (~rollouts.truncated[idx]).float().unsqueeze(1).to(device)
            logps, entropy = scores.logps, scores.entropy
            assert entropy is not None  # scored with_entropy, the default
            advantages = rollouts.advantages[idx].to(device)
            inputs = {name: pad_rows([values[i] for i in idx], logps.shape[1], device)
                      for name, values in rollouts.token_inputs.items()}  # (B, T) each
            # One policy update per generation batch (TRL num_iterations=1): π_old = π_θ, detached.
            per_token, stats = token_loss(logps=logps, old_logps=logps.detach(), entropy=entropy,
                                          advantages=advantages, is_demo=is_demo, **inputs)
            stats = dict(stats)
            if reference is not None:
                assert scores.kl is not None  # scored against the reference
                stats["kl_ref"] = scores.kl  # detached: measured, not trained on
                if cfg.beta > 0:
                    assert scores.ref_logps is not None  # scored with ref_logps when beta > 0
                    kl = losses.k3_kl(logps, scores.ref_logps)  # (B, T)
                    per_token = per_token + cfg.beta * kl * (~is_demo).float().unsqueeze(1)  # rollout rows only
                    stats["kl"] = kl.detach()
            loss = losses.reduce_token_loss(per_token, mask, cfg.loss_type, step_sequences, step_tokens,
                                            cfg.max_completion_length)
            loss_total += float(loss.detach())  # grpo/loss: the policy-gradient term, before weight and bonus
            loss = weight * loss
            if coef:
                loss = loss - coef * losses.entropy_bonus(entropy, mask, entropy_tokens or step_tokens)
            if observe is not None:
                observe(TokenView(logps.detach(), entropy.detach(), mask, is_demo, advantages))
            stats["entropy"] = entropy.detach()
            real = batch.target_mask
            rollout_tokens = real * (~is_demo).float().unsqueeze(1)
            for key, value in stats.items():
                defined = rollout_tokens * torch.isfinite(value).float()
                sums[key] += float((torch.nan_to_num(value) * defined).sum())
                counts[key] += float(defined.sum())
            demo_tokens = real * is_demo.float().unsqueeze(1)
            sums["demo/entropy"] += float((entropy.detach() * demo_tokens).sum())
            counts["demo/entropy"] += float(demo_tokens.sum())
            return loss

        self.accumulate(rollouts.prompt_ids, rollouts.target_ids, [len(t) for t in rollouts.target_ids],
                        cfg.temperature, micro_loss, reference=reference, ref_logps=cfg.beta > 0)
        keys = self.collective.union(sorted(sums))  # a process with no rows has no stats of its own
        totals = self.collective.sums([loss_total] + [sums[k] for k in keys] + [counts[k] for k in keys])
        metrics = {"grpo/loss": totals[0], **rollouts.metrics}
        names = {"low_clipped": "clip_ratio/low_mean", "high_clipped": "clip_ratio/high_mean"}
        for i, key in enumerate(keys):
            total, count = totals[1 + i], totals[1 + len(keys) + i]
            if count > 0:
                metrics[names.get(key, key)] = total / count
        if "clip_ratio/low_mean" in metrics or "clip_ratio/high_mean" in metrics:
            metrics["clip_ratio/region_mean"] = metrics.get("clip_ratio/low_mean", 0.0) + metrics.get(
                "clip_ratio/high_mean", 0.0)
        metrics["time/backward"] = time.perf_counter() - t0
        return metrics

    @torch.no_grad()
    def score_rows(self, prompt_ids: list[list[int]], target_ids: list[list[int]], model,
                   temperature: float = 1.0) -> list[torch.Tensor]:
        """log π(target_t | prompt, target_<t) of each row under `model`, no gradient, at `temperature`: one
        (len(target),) tensor per row, in micro-batches as the terms' (OPSD's and OPD's teachers)."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(target_ids)
        for rows in micro_batches([len(p) + len(t) for p, t in zip(prompt_ids, target_ids)],
                                  self.config.micro_batch_size):
            batch = pack([prompt_ids[i] for i in rows], [target_ids[i] for i in rows], self.pad_id, self.device)
            logps = score_targets(model, batch, temperature, with_entropy=False,
                                  chunk_size=self.config.logprob_chunk_size).logps
            for j, i in enumerate(rows):
                out[i] = logps[j, :len(target_ids[i])].float().cpu()
        return out
