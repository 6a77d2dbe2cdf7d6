"""Peak memory of one training forward + backward at a long completion length, with and without
activation checkpointing (`gradient_checkpointing`) and chunked log-probabilities (`logprob_chunk_size`).

What it measures
----------------
One micro-batch of ``--rows`` sequences (one shared prompt of ``--prompt-length`` tokens, then
``--length`` target tokens each) goes through sftrl's training forward (:func:`sftrl.batching.score_targets`:
the shared-prompt forward, or whole rows under checkpointing), a GRPO-style loss (token mean of
-A·log p minus 0.001·entropy) and ``backward()``. The model is the sandbox architecture at 10.7M
parameters (hidden 384, 6 layers, 6 heads, MLP 1024; ``benchmarks/grpo_step.py``'s ``sandbox-10m``),
untrained, float32, with the sandbox's 102-token vocabulary and, to show what the logits cost, with a
32k vocabulary (Llama-2's size; the same body, 23M parameters with its tied embedding).

Peak memory is the most the step needs above what is resident before it (weights, the batch):

- CPU: the process's peak resident set (Linux ``VmHWM``) minus its resident set before the step, the
  peak reset to the current size first by writing 5 to ``/proc/self/clear_refs``. tracemalloc does not
  see torch's allocations; RSS does, for every allocation torch makes (large tensors are mmap'ed and
  returned at free, so the peak is the tensors alive at once plus allocator slack).
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the step, after
  ``reset_peak_memory_stats()``: tensors only, no allocator cache.

Each configuration runs in a fresh subprocess of this script, so one's freed memory never hides
another's peak. Gradients of the weights are part of the peak (they are allocated in backward).

Run
---
::

    python benchmarks/memory.py                                   # CPU, the README's table
    python benchmarks/memory.py --device cuda --length 8192 --rows 8
    python benchmarks/memory.py --length 512 --rows 1 --vocabs 102  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SIZES_10M = {"hidden_size": 384, "num_layers": 6, "num_attention_heads": 6, "intermediate_size": 1024}
CONFIGS = [("plain", False, 0), ("checkpointing", True, 0), ("chunked log-probs", False, 1024),
           ("checkpointing + chunked", True, 1024)]


def _resident_kib() -> tuple[int, int]:
    """(current, peak) resident set of this process in KiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def measure(vocab: int, checkpointing: bool, chunk: int, args) -> dict:
    """One configuration, in this process: peak bytes above the resident memory before the step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftrl.batching import pack, score_targets
    from sftrl.models import set_activation_checkpointing

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=SIZES_10M["hidden_size"],
                         num_hidden_layers=SIZES_10M["num_layers"],
                         num_attention_heads=SIZES_10M["num_attention_heads"],
                         num_key_value_heads=SIZES_10M["num_attention_heads"],
                         intermediate_size=SIZES_10M["intermediate_size"],
                         max_position_embeddings=args.prompt_length + args.length + 8, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(device).train()
    if checkpointing:
        set_activation_checkpointing(model, True)
    prompt = torch.randint(3, vocab, (args.prompt_length,)).tolist()
    targets = [torch.randint(3, vocab, (args.length,)).tolist() for _ in range(args.rows)]
    batch = pack([prompt] * args.rows, targets, 0, device)
    advantages = torch.linspace(-1, 1, args.rows, device=device).unsqueeze(1)  # (B, 1)

    def step(batch):
        scores = score_targets(model, batch, 1.0, chunk_size=chunk)
        mask = batch.target_mask
        loss = ((-advantages * scores.logps - 0.001 * scores.entropy) * mask).sum() / mask.sum()
        loss.backward()
        return loss

    # A short step first, so one-time costs (kernel libraries, allocator pools) are not in the peak.
    step(pack([prompt] * args.rows, [t[:16] for t in targets], 0, device))
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _resident_kib()[0] * 1024
    loss = step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _resident_kib()[1] * 1024
    return {"vocab": vocab, "parameters": sum(p.numel() for p in model.parameters()),
            "checkpointing": checkpointing, "chunk": chunk, "peak_bytes": peak - before, "loss": float(loss.detach())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--length", type=int, default=2048, help="target (completion) tokens per row")
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--rows", type=int, default=2, help="sequences in the micro-batch")
    parser.add_argument("--vocabs", type=int, nargs="+", default=[102, 32000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # vocab,checkpointing,chunk: run one, in-process
    args = parser.parse_args()
    if args.one:
        vocab, checkpointing, chunk = (int(x) for x in args.one.split(","))
        print(json.dumps(measure(vocab, bool(checkpointing), chunk, args)))
        return 0
    rows = []
    for vocab in args.vocabs:
        for name, checkpointing, chunk in CONFIGS:
            command = [sys.executable, __file__, "--one", f"{vocab},{int(checkpointing)},{chunk}",
                       "--device", args.device, "--length", str(args.length), "--prompt-length",
                       str(args.prompt_length), "--rows", str(args.rows), "--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                sys.stderr.write(out.stderr)
                return out.returncode
            rows.append({"config": name, **json.loads(out.stdout.strip().splitlines()[-1])})
    print(f"one forward + backward, {args.rows} rows x ({args.prompt_length} prompt + {args.length} target) tokens, "
          f"float32, {args.device}; peak memory above the resident weights and batch")
    print(f"| vocabulary | parameters | configuration | peak MiB | vs plain |")
    print("|---:|---:|---|---:|---:|")
    for row in rows:
        plain = next(r for r in rows if r["vocab"] == row["vocab"] and r["config"] == "plain")
        print(f"| {row['vocab']} | {row['parameters'] / 1e6:.1f}M | {row['config']} | "
              f"{row['peak_bytes'] / 2**20:,.0f} | {row['peak_bytes'] / plain['peak_bytes']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
