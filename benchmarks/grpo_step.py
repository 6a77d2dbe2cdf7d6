"""Time one GRPO optimizer step of sftrl against TRL's `GRPOTrainer`, same model, data, reward and settings.

What it measures
----------------
For each engine, the wall-clock time of a GRPO optimizer step through the engine's real training loop,
averaged over ``--steps`` timed steps after ``--warmup`` untimed ones, split into phases:

- **generate**: rollouts (chat-template rendering, tokenising, ``model.generate``, decoding);
- **score**: reward function and group advantages (TRL: the rest of ``_generate_and_score_completions``);
- **loss+backward**: packing, forward, GRPO loss and backward over all micro-batches;
- **optimizer**: gradient clipping, AdamW step, scheduler step, ``zero_grad``;
- **other**: the step minus the above (batch sampling, bookkeeping, metrics).

plus generated tokens per second (completion tokens of the step / generation time, completion lengths
counted up to and including EOS by both engines), trained tokens per second (the same completion tokens /
loss+backward time) and peak memory (CPU: peak RSS of the engine's process, ``resource.getrusage``; CUDA:
``torch.cuda.max_memory_allocated``).

``--fixed-length`` makes the two engines do identical work: both sample exactly ``max_completion_length``
tokens for every rollout, EOS masked out of the sampling distribution until then (sftrl:
``min_completion_length = max_completion_length``; TRL: ``generation_kwargs={"min_new_tokens": ...}``, or
``min_tokens`` for vLLM), so every step generates and trains on the same number of tokens in both and the
ratio compares the engines, not the completion lengths they happened to sample.

- sftrl: ``Trainer(Config(method=grpo, rollout_backend=--sftrl-backend, ...)).train()``; phases are the ``time/*`` entries that the trainer
  writes to ``metrics.jsonl`` every step (``time/step``, ``time/generate``, ``time/score``,
  ``time/backward``, ``time/optimizer``).
- TRL: ``GRPOTrainer(...).train()`` on the same model directory, the sandbox train prompts in TRL's
  conversational format (so TRL applies the same chat template), ``sftrl.sandbox.plugin.sandbox_reward``, the same
  prompts per step, rollouts per prompt, micro-batch (``per_device_train_batch_size``, with
  ``gradient_accumulation_steps = batch_size * num_generations / micro_batch_size``), completion length,
  sampling (temperature 1, top-p 1, no top-k), loss (``dapo``, ``beta=0``, group reward scaling), learning
  rate, constant schedule, AdamW (``adamw_torch``), clipping at 1.0. No gradient checkpointing (sftrl has
  none) and, on CPU, no bf16 (TRL's defaults are bf16 and checkpointing). Steps are timed with a
  ``TrainerCallback`` (``on_step_begin`` -> ``on_step_end``); phases by wrapping ``_generate``,
  ``_generate_and_score_completions``, ``_prepare_inputs`` and ``training_step`` on the trainer.

Two ratios (``--settings both``, the default): the **identical-work** ratio, both engines in float32 on a
CPU (each engine's bf16 autocast on a GPU that has it: sftrl's ``mixed_precision=auto``, TRL's ``bf16``),
and the **best-settings** ratio, where each engine may use bf16 (sftrl ``mixed_precision=bf16``, TRL
``bf16=True``) with everything else the same. On a CPU the best-settings pass runs only where the CPU has
bfloat16 instructions (``sftrl.hardware.cpu_bf16_supported``: AVX512-BF16, AMX or Arm BF16); elsewhere it
prints "bf16 unsupported on <CPU name>" and is skipped. On a GPU the identical-work pass already runs
bf16 in both, so there is one pass. The output names the CPU. ``--settings identical`` or ``best`` runs one
pass; ``--force-bf16`` runs the best-settings pass on a CPU without bf16 instructions (torch emulates bf16
there, many times slower: only to test the path, its times mean nothing).

Each engine runs in a fresh subprocess of this script (``--engine-only NAME``), one after the other, with
the same environment and torch thread count, so peaks do not mix and neither engine warms the other's
caches. The two engines sample from the same model but draw different prompts and random numbers, so
their completion lengths differ a little; the table shows both, and tokens/s normalises for it.
``--rounds N`` runs the pair N times, alternating which engine goes first (sftrl, TRL, TRL, sftrl, ...),
and pools each engine's timed steps over the rounds; it also prints each round's ratio. On a machine
whose speed drifts from minute to minute (a shared VM), one round can land a slow spell on one engine.

Run
---
::

    python benchmarks/grpo_step.py                       # defaults below, CPU, both engines
    python benchmarks/grpo_step.py --steps 2 --warmup 1 --batch-size 4     # a quick smoke run
    python benchmarks/grpo_step.py --steps 1 --warmup 0 --batch-size 2 --num-generations 2 --max-completion-length 8  # smallest
    python benchmarks/grpo_step.py [--steps N] [--warmup K] [--batch-size 16] [--num-generations 8]
        [--max-completion-length 64] [--micro-batch-size 64] [--model sandbox|PATH] [--engines sftrl,trl]
        [--device cpu|cuda] [--threads N] [--learning-rate 1e-3] [--seed 0] [--json out.json]
        [--profile DIR] [--fixed-length] [--sftrl-backend torch|generate|vllm] [--rollout hf|vllm] [--rounds N]
        [--settings identical|best|both] [--force-bf16]
    python benchmarks/grpo_step.py --fixed-length --threads 2 --rounds 3                       # the README's table
    python benchmarks/grpo_step.py --fixed-length --threads 2 --rounds 3 --model sandbox-10m   # a 10M-parameter model
    python benchmarks/grpo_step.py --device cuda --rollout vllm --model Qwen/Qwen2.5-0.5B-Instruct  # GPU, vLLM colocate

``--model sandbox`` (default) is the prepared sandbox base model (``sftrl.models.resolve_model_path``;
trained and cached on first use, before any engine starts); ``sandbox-10m`` is an untrained Llama of the
sandbox's vocabulary with 10.7M parameters (hidden 384, 6 layers, 6 heads, MLP 1024), built with seed 0 and
saved to a temporary directory that both engines load (use it with ``--fixed-length``: untrained, its
completion lengths mean nothing). ``--rollout vllm`` (GPU) samples with vLLM colocated in both engines,
sleep mode on (sftrl: ``rollout_backend=vllm``; TRL: ``use_vllm``, ``vllm_mode="colocate"``,
``vllm_enable_sleep_mode``), each with 0.3 of the GPU's memory. ``--profile DIR`` runs each engine under
cProfile, writes ``DIR/<engine>.prof`` and prints the top functions (timings then include the profiler's
overhead). Needs ``trl`` (``pip install -e '.[bench]'``) for the TRL engine. Set ``HF_HUB_OFFLINE=1``
on machines without internet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("sftrl", "trl")
PHASES = ("generate", "score", "loss_backward", "optimizer", "other")
VLLM_MEMORY = 0.3  # share of the GPU each engine's colocated vLLM takes (--rollout vllm)
# --model sandbox-10m: the sandbox's architecture and vocabulary at 10.7M parameters
SIZES_10M = {"hidden_size": 384, "num_layers": 6, "num_attention_heads": 6, "intermediate_size": 1024}


# ---------------------------------------------------------------------------------------------- helpers
def _rss_mib() -> float | None:
    """Current resident set size of this process (Linux), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _summarise(steps: list[dict], warmup: int, batch_sequences: int) -> dict:
    """Means over the timed steps (step numbers > warmup) of the step time and its phases; tokens/s."""
    timed = [s for s in steps if s["step"] > warmup]
    times = sorted(s["step_time"] for s in timed)
    summary = {"timed_steps": len(timed), "step": _mean(times),
               "step_median": (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2 if times else float("nan"),
               "step_min": times[0] if times else float("nan")}
    for phase in PHASES:
        summary[phase] = _mean([s[phase] for s in timed])
    tokens = sum(s["mean_length"] * batch_sequences for s in timed)
    gen_seconds = sum(s["generate"] for s in timed)
    summary["mean_length"] = _mean([s["mean_length"] for s in timed])
    train_seconds = sum(s["loss_backward"] for s in timed)
    summary["gen_tokens_per_s"] = tokens / gen_seconds if gen_seconds > 0 else float("nan")
    summary["train_tokens_per_s"] = tokens / train_seconds if train_seconds > 0 else float("nan")
    summary["steps_per_s"] = 1.0 / summary["step"] if summary["step"] > 0 else float("nan")
    return summary


def _memory(device: str) -> dict:
    import torch

    out = {"peak_rss_mib": _peak_rss_mib()}
    if device == "cuda":
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_profiled(fn, engine: str, profile_dir: str | None):
    """Run fn(); under cProfile when profile_dir is set (dump DIR/engine.prof, print the top functions)."""
    if not profile_dir:
        return fn()
    import cProfile
    import io
    import pstats

    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(fn)
    finally:
        path = Path(profile_dir) / f"{engine}.prof"
        profiler.dump_stats(path)
        for key in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(40)
            (Path(profile_dir) / f"{engine}.{key}.txt").write_text(text.getvalue())
        print(f"[{engine}] cProfile written to {path} (+ {engine}.cumulative.txt, {engine}.tottime.txt)", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- engines
def run_sftrl(args, workdir: Path) -> dict:
    from sftrl.validate import load_config
    from sftrl.trainer import Trainer

    if args.force_bf16:  # test the bf16 path on a CPU without bf16 instructions (emulated: slow)
        import sftrl.hardware

        sftrl.hardware.cpu_bf16_supported = lambda: True
    total_steps = args.warmup + args.steps
    sequences = args.batch_size * args.num_generations
    config = load_config(overrides={
        "method": "grpo",
        "model": args.model,
        "train_data": "sandbox",
        "eval_data": None,
        "progress": False,
        "save_every": 0,
        "output_dir": str(workdir / "sftrl-run"),
        "max_steps": total_steps,
        "batch_size": args.batch_size,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length,
        "micro_batch_size": args.micro_batch_size,
        "generation_batch_size": sequences,  # one generate() call per step, as TRL does
        "rollout_backend": args.sftrl_backend,
        "min_completion_length": args.max_completion_length if args.fixed_length else 0,
        "learning_rate": args.learning_rate,
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "temperature": 1.0,
        "top_p": 1.0,
        "beta": 0.0,
        "loss_type": "dapo",
        "scale_rewards": "group",
        "logging_steps": 1,
        "seed": args.seed,
        "mixed_precision": "bf16" if args.bf16 else "no" if args.device == "cpu" else "auto",
        "vllm_gpu_memory_utilization": VLLM_MEMORY,
    })
    t0 = time.perf_counter()
    trainer = Trainer(config)
    setup_s = time.perf_counter() - t0
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    _run_profiled(trainer.train, "sftrl", args.profile)
    train_s = time.perf_counter() - t0

    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = []
    for r in records:
        if "time/step" not in r:
            continue  # evaluation-only records
        phases = {"generate": r["time/generate"], "score": r["time/score"], "loss_backward": r["time/backward"],
                  "optimizer": r["time/optimizer"]}
        phases["other"] = r["time/step"] - sum(phases.values())
        steps.append({"step": r["step"], "step_time": r["time/step"], **phases,
                      "mean_length": r["completions/mean_length"], "reward": r.get("reward")})
    return {"engine": "sftrl", "steps": steps, "setup_s": setup_s, "train_s": train_s,
            "rss_before_train_mib": rss_before, "mixed_precision": trainer.accelerator.mixed_precision,
            "rollout_backend": args.sftrl_backend}


def run_trl(args, workdir: Path) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sftrl.models import load_model, load_tokenizer
    from sftrl.sandbox.plugin import sandbox_reward
    from sftrl.sandbox.task import make_split

    total_steps = args.warmup + args.steps
    sequences = args.batch_size * args.num_generations
    micro = args.micro_batch_size
    bf16 = args.bf16 or (args.device == "cuda" and torch.cuda.is_bf16_supported())  # sftrl's mixed_precision=auto
    vllm = args.rollout == "vllm"
    generation_kwargs = None
    if args.fixed_length:  # EOS masked until max_completion_length, as sftrl's min_completion_length does
        generation_kwargs = {("min_tokens" if vllm else "min_new_tokens"): args.max_completion_length}
    rows = make_split("train")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in rows])
    config = GRPOConfig(
        output_dir=str(workdir / "trl-run"),
        max_steps=total_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=sequences // micro,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        num_iterations=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        optim="adamw_torch",
        max_grad_norm=1.0,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
        use_cpu=args.device == "cpu",
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        generation_kwargs=generation_kwargs,
        use_vllm=vllm,
        **({"vllm_mode": "colocate", "vllm_enable_sleep_mode": True, "vllm_gpu_memory_utilization": VLLM_MEMORY}
           if vllm else {}),
    )
    t0 = time.perf_counter()
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.model)

    # Step times: on_step_begin -> on_step_end (the inner loop calls on_step_begin right before the first
    # micro-batch's training_step, and on_step_end right after zero_grad, before logging).
    acc: dict[str, float] = {}
    state = {"t_begin": 0.0, "last_training_step_end": 0.0}
    steps: dict[int, dict] = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state_, control, **kwargs):
            acc.clear()
            state["t_begin"] = time.perf_counter()

        def on_step_end(self, args_, state_, control, **kwargs):
            now = time.perf_counter()
            gen = acc.get("_generate", 0.0)
            phases = {
                "generate": gen,
                "score": acc.get("_generate_and_score_completions", 0.0) - gen,
                "loss_backward": acc.get("training_step", 0.0) - acc.get("_prepare_inputs", 0.0),
                "optimizer": now - state["last_training_step_end"],
            }
            step_time = now - state["t_begin"]
            phases["other"] = step_time - sum(phases.values())
            steps[state_.global_step] = {"step": state_.global_step, "step_time": step_time, **phases}

        def on_log(self, args_, state_, control, logs=None, **kwargs):
            record = steps.get(state_.global_step)
            if record is not None and logs and "completions/mean_length" in logs:
                record["mean_length"] = logs["completions/mean_length"]
                record["reward"] = logs.get("reward")
                record["trl_step_time"] = logs.get("step_time")

    trainer = GRPOTrainer(model=model, reward_funcs=sandbox_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)

    def timed(name: str, mark_end: bool = False):
        inner = getattr(trainer, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                end = time.perf_counter()
                acc[name] = acc.get(name, 0.0) + end - t
                if mark_end:
                    state["last_training_step_end"] = end

        setattr(trainer, name, wrapper)  # instance attribute: found before the class's method by self.<name>

    timed("_generate")
    timed("_generate_and_score_completions")
    timed("_prepare_inputs")
    timed("training_step", mark_end=True)
    setup_s = time.perf_counter() - t0
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    _run_profiled(trainer.train, "trl", args.profile)
    train_s = time.perf_counter() - t0
    return {"engine": "trl", "steps": [steps[k] for k in sorted(steps)], "setup_s": setup_s, "train_s": train_s,
            "rss_before_train_mib": rss_before, "mixed_precision": "bf16" if bf16 else "no",
            "trl_version": trl.__version__, "rollout_backend": "vllm" if vllm else "generate",
            "trl_settings": {"per_device_train_batch_size": config.per_device_train_batch_size,
                             "gradient_accumulation_steps": config.gradient_accumulation_steps,
                             "generation_batch_size": config.generation_batch_size,
                             "steps_per_generation": config.steps_per_generation}}


def engine_main(args) -> None:
    """Child process: run one engine, write its result to --json."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    runner = {"sftrl": run_sftrl, "trl": run_trl}[args.engine_only]
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.engine_only}-") as tmp:
        result = runner(args, Path(tmp))
    result.update(_memory(args.device))
    result["torch_threads"] = torch.get_num_threads()
    result["summary"] = _summarise(result["steps"], args.warmup, args.batch_size * args.num_generations)
    Path(args.json).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------- driver
def _child_env(args) -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # sftrl's Trainer would otherwise pick up a visible GPU
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def _run_engine(args, engine: str, tmp: Path, round_: int = 0, bf16: bool = False) -> dict:
    tag = "-bf16" if bf16 else ""
    out = tmp / f"{engine}-{round_}{tag}.json"
    log = tmp / f"{engine}-{round_}{tag}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--engine-only", engine, "--json", str(out),
           "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size), "--num-generations", str(args.num_generations),
           "--max-completion-length", str(args.max_completion_length),
           "--micro-batch-size", str(args.micro_batch_size), "--device", args.device,
           "--learning-rate", str(args.learning_rate), "--seed", str(args.seed),
           "--sftrl-backend", args.sftrl_backend, "--rollout", args.rollout]
    if args.fixed_length:
        cmd.append("--fixed-length")
    if bf16:
        cmd.append("--bf16")
    if args.force_bf16:
        cmd.append("--force-bf16")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.profile:
        cmd += ["--profile", args.profile]
    rounds = f", round {round_ + 1} of {args.rounds}" if args.rounds > 1 else ""
    rounds += ", bf16" if bf16 else ""
    print(f"running {engine} ({args.warmup} warm-up + {args.steps} timed steps{rounds}) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, env=_child_env(args), stdout=handle, stderr=subprocess.STDOUT)
    text = log.read_text()
    if args.verbose or proc.returncode:
        sys.stderr.write(text[-20000:] if proc.returncode else text)
    if proc.returncode:
        raise SystemExit(f"{engine} failed (exit {proc.returncode}); its output is above")
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def _pool(runs: list[dict], warmup: int, sequences: int) -> dict:
    """One engine's rounds as one result: every round's timed steps, summarised together."""
    pooled = dict(runs[0])
    pooled["steps"] = [step for run in runs for step in run["steps"]]
    pooled["summary"] = _summarise(pooled["steps"], warmup, sequences)
    pooled["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    if "cuda_peak_allocated_mib" in runs[0]:
        pooled["cuda_peak_allocated_mib"] = max(run["cuda_peak_allocated_mib"] for run in runs)
    return pooled


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def render(results: dict, settings: dict, rounds: list[dict] | None = None) -> str:
    device = settings["device"]
    mem_col = "peak RSS (MiB)" if device == "cpu" else "peak CUDA alloc (MiB)"
    lines = [f"| engine | step (s) | generate | score | loss+backward | optimizer | other | gen tok/s "
             f"| train tok/s | {mem_col} | mean len | median step (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        s = r["summary"]
        mem = r["peak_rss_mib"] if device == "cpu" else r.get("cuda_peak_allocated_mib")
        label = f"{name} ({r.get('rollout_backend', '?')})"
        lines.append(f"| {label} | {_fmt(s['step'])} | {_fmt(s['generate'])} | {_fmt(s['score'])} "
                     f"| {_fmt(s['loss_backward'])} | {_fmt(s['optimizer'])} | {_fmt(s['other'])} "
                     f"| {_fmt(s['gen_tokens_per_s'], 0)} | {_fmt(s['train_tokens_per_s'], 0)} "
                     f"| {_fmt(mem, 0)} | {_fmt(s['mean_length'], 1)} "
                     f"| {_fmt(s['step_median'])} |")
    out = "\n".join(lines)
    if "sftrl" in results and "trl" in results:
        ratio = results["sftrl"]["summary"]["steps_per_s"] / results["trl"]["summary"]["steps_per_s"]
        median_ratio = results["trl"]["summary"]["step_median"] / results["sftrl"]["summary"]["step_median"]
        pooled = f" over all {len(rounds)} rounds' timed steps" if rounds and len(rounds) > 1 else ""
        out += (f"\n\nsftrl steps/s ÷ TRL steps/s = {ratio:.2f} (from mean step times{pooled}; "
                f"from median step times: {median_ratio:.2f})")
        if rounds and len(rounds) > 1:
            ratios = [r["trl"]["summary"]["step"] / r["sftrl"]["summary"]["step"] for r in rounds]
            out += "\n" + "\n".join(
                f"round {i + 1}: {q:.2f} (sftrl {r['sftrl']['summary']['step']:.3f} s, TRL {r['trl']['summary']['step']:.3f} s)"
                for i, (q, r) in enumerate(zip(ratios, rounds)))
            out += f"\nper-round ratios: median {sorted(ratios)[len(ratios) // 2]:.2f}, range {min(ratios):.2f}-{max(ratios):.2f}"
    out += ("\n\nsettings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return out


def _build_10m_model(directory: Path) -> str:
    """An untrained 10.7M-parameter Llama with the sandbox tokenizer, saved to `directory`."""
    from sftrl.sandbox.model import build_model
    from sftrl.sandbox.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0, **SIZES_10M)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    print(f"sandbox-10m: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", file=sys.stderr)
    return str(directory)


def _sandbox_model_path() -> str:
    from sftrl.models import resolve_model_path

    try:
        return resolve_model_path("sandbox")
    except ImportError:  # a checkout where sftrl.sandbox does not re-export prepare_base_model
        from sftrl.sandbox.prepare import prepare_base_model

        return str(prepare_base_model())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps before them (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per optimizer step (default 16)")
    p.add_argument("--num-generations", type=int, default=8, help="rollouts per prompt (default 8)")
    p.add_argument("--max-completion-length", type=int, default=64, help="max new tokens (default 64)")
    p.add_argument("--micro-batch-size", type=int, default=64,
                   help="sequences per forward/backward (TRL per_device_train_batch_size; default 64, "
                        "capped at batch-size × num-generations)")
    p.add_argument("--model", default="sandbox", help="'sandbox' (the prepared base model) or a model directory")
    p.add_argument("--engines", default="sftrl,trl", help="comma-separated: sftrl, trl (default both)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each engine (default: torch's default)")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="AdamW learning rate (default 1e-5: low enough that both engines keep the same completion lengths, so their step times compare like for like)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1,
                   help="run the engines this many times, alternating which goes first, and pool their timed steps: "
                        "a machine whose speed drifts then slows both alike (default 1)")
    p.add_argument("--json", help="write settings, per-step timings and summaries here")
    p.add_argument("--profile", metavar="DIR", help="run each engine under cProfile; write DIR/<engine>.prof")
    p.add_argument("--verbose", action="store_true", help="show each engine's own output")
    p.add_argument("--fixed-length", action="store_true",
                   help="both engines sample exactly --max-completion-length tokens (EOS masked until then): identical work")
    p.add_argument("--rollout", choices=("hf", "vllm"), default="hf",
                   help="hf: sftrl's --sftrl-backend and TRL's transformers generate; vllm: both with vLLM colocated (GPU)")
    p.add_argument("--sftrl-backend", choices=("torch", "generate", "vllm"),
                   help="sftrl's rollout_backend (default: torch, or vllm with --rollout vllm)")
    p.add_argument("--settings", choices=("identical", "best", "both"), default="both",
                   help="identical: both engines in float32 on a CPU (the identical-work ratio); best: each engine "
                        "in bf16 where the CPU has bfloat16 instructions (TRL bf16=True); both (default)")
    p.add_argument("--force-bf16", action="store_true",
                   help="run the bf16 pass on a CPU without bfloat16 instructions (emulated, slow: tests the path only)")
    p.add_argument("--engine-only", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)  # an engine child's best-settings pass
    args = p.parse_args(argv)
    if args.sftrl_backend is None:
        args.sftrl_backend = "vllm" if args.rollout == "vllm" else "torch"
    sequences = args.batch_size * args.num_generations
    args.micro_batch_size = min(args.micro_batch_size, sequences)
    if sequences % args.micro_batch_size:
        p.error(f"batch-size × num-generations ({sequences}) must be a multiple of --micro-batch-size "
                f"({args.micro_batch_size}): TRL accumulates whole micro-batches")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    return args


def cpu_description() -> tuple[str, bool]:
    """(the CPU's name, whether it has bfloat16 instructions): sftrl.hardware's answers."""
    from sftrl.hardware import cpu_bf16_supported, cpu_name

    return cpu_name(), cpu_bf16_supported()


def passes(settings: str, device: str, cpu_bf16: bool, force_bf16: bool, cpu: str) -> list[tuple[str, bool, str | None]]:
    """The passes to run, (name, bf16, why skipped or None): identical-work and/or best-settings."""
    out = []
    if settings in ("identical", "both"):
        out.append(("identical", False, None))
    if settings in ("best", "both"):
        if device == "cuda":
            skip = None if settings == "best" else "on a GPU the identical-work pass already runs both engines in bf16"
            out.append(("best", settings == "best", skip))
        elif cpu_bf16 or force_bf16:
            out.append(("best", True, None))
        else:
            out.append(("best", True, f"bf16 unsupported on {cpu}"))
    return out


def pass_label(name: str, precision: str | None, fixed_length: bool) -> str:
    lengths = "fixed length" if fixed_length else "sampled lengths"
    what = {"no": "float32", "bf16": "bf16", None: "?"}.get(precision, precision)
    if name == "identical":
        return f"identical work ({what}, {lengths})"
    return f"best settings (each engine in {what}: sftrl mixed_precision=bf16, TRL bf16=True; {lengths})"


def ratio_line(label: str, rounds: list[dict] | None, skipped: str | None = None) -> str:
    """One summary line: sftrl steps/s over TRL's, pooled over the rounds' timed steps (mean step times),
    with each round's ratio; or why the pass was skipped."""
    if skipped:
        return f"{label}: skipped, {skipped}"
    if not rounds or not all("sftrl" in r and "trl" in r for r in rounds):
        return f"{label}: no ratio (one engine only)"
    sftrl = [s["step_time"] for r in rounds for s in r["sftrl"]["timed"]]
    trl = [s["step_time"] for r in rounds for s in r["trl"]["timed"]]
    ratio = _mean(trl) / _mean(sftrl) if sftrl and trl else float("nan")
    per_round = [r["trl"]["summary"]["step"] / r["sftrl"]["summary"]["step"] for r in rounds]
    text = f"{label}: sftrl/TRL = {_fmt(ratio, 2)}x"
    if len(rounds) > 1:
        text += " (per round " + ", ".join(_fmt(q, 2) for q in per_round) + ")"
    return text


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.engine_only:
        if not args.json:
            raise SystemExit("--engine-only needs --json")
        engine_main(args)
        return
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        raise SystemExit(f"--engines: choose from {', '.join(ENGINES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch
    import transformers

    cpu, cpu_bf16 = cpu_description()
    plan = passes(args.settings, args.device, cpu_bf16, args.force_bf16, cpu)
    requested_model = args.model
    if args.model == "sandbox":  # prepare (train and cache) it here, once, before either engine starts
        args.model = str(Path(_sandbox_model_path()).resolve())
    done: dict[str, tuple[list[dict], dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        if args.model == "sandbox-10m":
            args.model = _build_10m_model(Path(tmp) / "sandbox-10m")
        for name, bf16, skipped in plan:
            if skipped:
                continue
            rounds = []
            for round_ in range(args.rounds):
                order = engines if round_ % 2 == 0 else engines[::-1]
                this = {engine: _run_engine(args, engine, Path(tmp), round_, bf16) for engine in order}
                rounds.append({engine: this[engine] for engine in engines})
            sequences = args.batch_size * args.num_generations
            for r in rounds:
                for engine in engines:
                    r[engine]["timed"] = [s for s in r[engine]["steps"] if s["step"] > args.warmup]
            done[name] = (rounds, {engine: _pool([r[engine] for r in rounds], args.warmup, sequences)
                                   for engine in engines})

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    settings = {
        "model": requested_model if requested_model == args.model else f"{requested_model} ({args.model})",
        "device": args.device,
        "cpu": cpu, "cpu_bf16": cpu_bf16,
        "batch_size": args.batch_size, "num_generations": args.num_generations,
        "sequences_per_step": args.batch_size * args.num_generations,
        "max_completion_length": args.max_completion_length, "micro_batch_size": args.micro_batch_size,
        "learning_rate": args.learning_rate, "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds,
        "seed": args.seed,
        "fixed_length": args.fixed_length, "rollout": args.rollout,
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    summary, payload = [], {"settings": settings, "passes": {}}
    for name, bf16, skipped in plan:
        if name not in done:
            summary.append(ratio_line(pass_label(name, "bf16" if bf16 else "no", args.fixed_length), None, skipped))
            payload["passes"][name] = {"skipped": skipped}
            continue
        rounds, results = done[name]
        first = next(iter(results.values()))
        label = pass_label(name, first.get("mixed_precision"), args.fixed_length)
        if bf16 and args.force_bf16 and not cpu_bf16 and args.device == "cpu":
            label += " [forced on a CPU without bf16 instructions: emulated, the times mean nothing]"
        pass_settings = {**settings, "threads": first["torch_threads"], "mixed_precision": first.get("mixed_precision")}
        print(f"## {label}\n")
        print(render(results, pass_settings, rounds) + "\n")
        summary.append(ratio_line(label, rounds))
        entry = {"settings": pass_settings, "engines": results}
        if args.rounds > 1:
            entry["rounds"] = rounds
        if "sftrl" in results and "trl" in results:
            entry["sftrl_over_trl_steps_per_s"] = (results["sftrl"]["summary"]["steps_per_s"]
                                                  / results["trl"]["summary"]["steps_per_s"])
        payload["passes"][name] = entry
    print("\n".join(summary))
    print(f"CPU: {cpu} (bfloat16 instructions: {'yes' if cpu_bf16 else 'no'}); device {args.device}")
    if args.json:
        identical = payload["passes"].get("identical", {})
        payload.update({key: identical[key] for key in ("engines", "rounds", "sftrl_over_trl_steps_per_s")
                        if key in identical})  # the identical-work pass where earlier readers look
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"\nwritten to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
