#!/usr/bin/env bash
# One GPU check of what CPU machines cannot run, meant to take under 8 minutes on one GPU (not yet run on
# one), nothing downloaded: the shipped sandbox model, and a tiny random Qwen2 built here with the
# sandbox's tokenizer (the decode check builds its own random Llama and Qwen2).
#
#   benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--python PY]
#   DRY_RUN=1 benchmarks/gpu_check.sh          # the same as --dry-run
#
# Checks, each printing one PASS / FAIL / SKIP line with its numbers:
#   env         torch, the GPU, vLLM and TRL versions (SKIP lines below say what is missing)
#   decode      sftrl's Llama-family decode step (src/sftrl/rollout/llama.py) on CUDA against the model's
#               forward, Llama and Qwen2, float32 and bf16: largest logit difference, top-1 agreement, ms/step
#   train       GRPO on the sandbox model, rollout_backend=torch, mixed_precision=auto (bf16 on the GPU)
#   bf16        SFT with mixed_precision=bf16 against mixed_precision=no: the per-step losses' largest gap
#   fsdp        GRPO through accelerate's FSDP2 (examples/accelerate/fsdp.yaml) on one process:
#               parameters sharded (DTensor), every step finished
#   vllm        GRPO on the tiny Qwen2 with rollout_backend=vllm (colocated, sleep mode); SKIP without vLLM
#   bench       benchmarks/grpo_step.py against TRL's GRPOTrainer (fixed length, bf16 in both); SKIP without TRL
#   bench-vllm  the same with both engines sampling through a colocated vLLM; SKIP without vLLM or TRL
# then a summary line; the exit status is 1 if any check failed. Each check's output is in DIR/logs/.
# A time budget (GPU_CHECK_BUDGET_S, default 470 s) skips the checks that would no longer fit.
#
# --dry-run runs each check's CPU equivalent, tiny (CUDA hidden): the decode comparison on CPU, one GRPO
# step, two SFT steps per precision (bf16 forced past the CPU check: torch emulates it), FSDP2 over gloo
# through tests/fsdp_on_cpu.py (accelerate shards only on GPUs), the vLLM run's config validated, and the
# benchmark's arguments validated; a test runs it (tests/test_benchmark_scripts.py).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=${DRY_RUN:-0}
PY=${PYTHON:-python}
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT=$2; shift ;;
        --python) PY=$2; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$DRY_RUN" = "0" ] || DRY_RUN=1
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET=${GPU_CHECK_BUDGET_S:-470}
if [ "$DRY_RUN" = "1" ]; then
    export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

# ------------------------------------------------------------------------------------------ the helper
cat > "$OUT/check.py" <<'PYTHON'
"""gpu_check.sh's helper: one subcommand per check; the last line of each is `RESULT {json}`."""
import json
import sys
import time
from pathlib import Path

ROOT = Path(sys.argv[1])
COMMAND, ARGS = sys.argv[2], sys.argv[3:]
if COMMAND != "bench-args":  # torch takes seconds to import; the argument check needs none of it
    import torch

    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def result(**values):
    print("RESULT " + json.dumps(values), flush=True)


def force_cpu_bf16():
    """Dry run: let mixed_precision=bf16 past sftrl's CPU check (torch emulates bf16: slow, correct)."""
    import sftrl.hardware
    sftrl.hardware.cpu_bf16_supported = lambda: True


def env():
    import importlib.util
    out = {"torch": torch.__version__, "device": DEVICE, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None,
           "bf16": torch.cuda.is_bf16_supported() if DEVICE == "cuda" else None}
    for name in ("vllm", "trl", "transformers", "accelerate"):
        try:
            out[name] = __import__(name).__version__ if importlib.util.find_spec(name) else None
        except Exception as exc:  # installed but broken (a CUDA mismatch): report it as missing, with why
            out[name] = None
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
    from sftrl.hardware import cpu_bf16_supported, cpu_name
    out["cpu"], out["cpu_bf16"] = cpu_name(), cpu_bf16_supported()
    result(**out)


def models(directory):
    """A tiny random Qwen2 (GQA, head_dim 64, which vLLM's attention kernels take) with the sandbox's
    tokenizer and chat template, so it trains on the sandbox's data (the sandbox model is the Llama)."""
    from transformers import AutoModelForCausalLM, Qwen2Config
    from sftrl.models import load_tokenizer, resolve_model_path
    tokenizer = load_tokenizer(resolve_model_path("sandbox"))
    ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id)
    sizes = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    built = {}
    for name, config in (("qwen2", Qwen2Config(**sizes, **ids)),):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).float()
        path = Path(directory) / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        built[name] = str(path)
    result(**built, parameters=sum(p.numel() for p in model.parameters()))


def decode(dry):
    """LlamaDecoder against ForwardDecoder on the same tokens: in float32 the largest logit difference;
    in bf16 its gap to the float32 forward against the bf16 forward's own gap; both timed per step."""
    import copy

    from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen2Config
    from sftrl.models import cache_keyword
    from sftrl.rollout import llama
    from sftrl.rollout.common import left_pad
    from sftrl.rollout.decode import ForwardDecoder

    if dry:
        sizes = dict(vocab_size=102, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)
        groups, repeat, steps = 3, 2, 6
    else:
        sizes = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                     num_attention_heads=16, num_key_value_heads=4)
        groups, repeat, steps = 16, 8, 64
    sizes.update(max_position_embeddings=512, pad_token_id=0, eos_token_id=1)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, sizes["vocab_size"], (int(n),), generator=generator).tolist()
               for n in torch.randint(8, 40, (groups,), generator=generator)]
    out = {}
    for family, config in (("llama", LlamaConfig(**sizes)), ("qwen2", Qwen2Config(**sizes))):
        torch.manual_seed(0)
        reference = AutoModelForCausalLM.from_config(config).to(DEVICE).eval()
        with torch.no_grad():  # untrained norms are ones and biases zeros: make them matter
            for name, param in reference.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    param.add_(torch.randn_like(param) * 0.3)
        for dtype in (torch.float32, torch.bfloat16):
            model = reference if dtype == torch.float32 else copy.deepcopy(reference).to(dtype)
            if not llama.supports(model, 40 + steps):
                raise SystemExit(f"{family}: sftrl's decode step does not accept this model")

            def start(m, kind):
                ids, mask = left_pad(prompts, 0, torch.device(DEVICE))
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                prefill = DynamicCache()
                with torch.no_grad():
                    logits = m(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               logits_to_keep=1, **{cache_keyword(m): prefill}).logits[:, -1]
                rows = len(prompts) * repeat
                attention = torch.cat([mask.repeat_interleave(repeat, 0), mask.new_ones(rows, steps)], dim=1)
                decoder = kind(m, prefill, repeat, attention)
                return decoder, logits.repeat_interleave(repeat, 0), positions[:, -1].repeat_interleave(repeat, 0) + 1

            exact, first, position = start(reference, ForwardDecoder)  # float32 forward: the tokens and the truth
            ours, _, _ = start(model, llama.LlamaDecoder)
            theirs, _, _ = start(model, ForwardDecoder)
            gap_ours = gap_theirs = 0.0
            agree = total = 0
            token = first.argmax(-1)
            times = {"ours": 0.0, "forward": 0.0}
            with torch.no_grad():
                for step in range(steps - 1):
                    truth = exact(token, position).float()
                    for name, decoder in (("ours", ours), ("forward", theirs)):
                        if DEVICE == "cuda":
                            torch.cuda.synchronize()
                        t = time.perf_counter()
                        logits = decoder(token, position)
                        if DEVICE == "cuda":
                            torch.cuda.synchronize()
                        if step >= 2:  # the first steps warm up kernels and allocations
                            times[name] += time.perf_counter() - t
                        if name == "ours":
                            mine = logits.float()
                        else:
                            forward = logits.float()
                    gap_ours = max(gap_ours, float((mine - truth).abs().max()))
                    gap_theirs = max(gap_theirs, float((forward - truth).abs().max()))
                    agree += int((mine.argmax(-1) == forward.argmax(-1)).sum())
                    total += mine.shape[0]
                    token, position = truth.argmax(-1), position + 1
            kind = "fp32" if dtype == torch.float32 else "bf16"
            timed = max(1, steps - 3)
            ok = gap_ours <= 1e-3 * max(1.0, float(truth.abs().max())) if kind == "fp32" else \
                gap_ours <= 2 * gap_theirs + 1e-2
            out[f"{family}-{kind}"] = {"ok": ok, "gap": gap_ours, "forward_gap": gap_theirs, "top1": agree / total,
                                       "ms_ours": 1000 * times["ours"] / timed,
                                       "ms_forward": 1000 * times["forward"] / timed}
    result(device=DEVICE, rows=groups * repeat, steps=steps, **out)


def train(overrides, fsdp_on_cpu=False):
    """One sftrl training run in this process; what it ran on, its steps and their numbers."""
    if fsdp_on_cpu:  # dry run: accelerate's FSDP2 state on CPU processes (gloo), as the CPU tests do
        sys.path.insert(0, str(ROOT / "tests"))
        import fsdp_on_cpu  # noqa: F401  (patches accelerate.Accelerator on import)
    if overrides.pop("force_cpu_bf16", False):
        force_cpu_bf16()
    from sftrl.rollout import llama
    from sftrl.trainer import Trainer
    from sftrl.validate import load_config

    fast_steps = [0]
    step = llama.LlamaDecoder.__call__

    def counted(self, *args, **kwargs):
        fast_steps[0] += 1
        return step(self, *args, **kwargs)

    llama.LlamaDecoder.__call__ = counted
    config = load_config(overrides=overrides)
    started = time.perf_counter()
    trainer = Trainer(config)
    setup = time.perf_counter() - started
    summary = trainer.train()
    seconds = time.perf_counter() - started - setup
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]

    def mean(key):
        values = [r[key] for r in steps if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    if trainer.accelerator.process_index == 0:
        result(steps=len(steps), asked=config.max_steps, seconds=seconds, setup=setup,
               backend=trainer.parallel.backend, mixed=trainer.accelerator.mixed_precision,
               device=str(trainer.accelerator.device), processes=trainer.world,
               parameters=sorted({type(p).__name__ for p in trainer.model.parameters()}),
               rollout=config.rollout_backend, fast_decode_steps=fast_steps[0],
               losses=[r["loss"] for r in steps], sft_losses=[r.get("sft/loss") for r in steps],
               reward=mean("reward"), length=mean("completions/mean_length"),
               skipped=summary.get("skipped_steps"))


def parity(overrides):
    """SFT in float32 and under bf16 autocast, same data and seed: the per-step losses' largest relative gap."""
    from accelerate.state import AcceleratorState
    from sftrl.trainer import Trainer
    from sftrl.validate import load_config

    if overrides.pop("force_cpu_bf16", False):
        force_cpu_bf16()
    runs = {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state()  # one mixed-precision setting per process otherwise
        config = load_config(overrides={**overrides, "mixed_precision": precision,
                                        "output_dir": overrides["output_dir"] + "-" + precision})
        started = time.perf_counter()
        trainer = Trainer(config)
        trainer.train()
        records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[precision] = {"mixed": trainer.accelerator.mixed_precision, "seconds": time.perf_counter() - started,
                           "losses": [r["sft/loss"] for r in records if "sft/loss" in r]}
    gaps = [abs(b - a) / max(abs(a), 1e-8) for a, b in zip(runs["no"]["losses"], runs["bf16"]["losses"])]
    result(gap=max(gaps) if gaps else None, gap_first=gaps[0] if gaps else None, steps=len(gaps),
           **{f"{name}_{precision}": value for precision, run in runs.items() for name, value in run.items()})


def validate(overrides):
    """Dry run of the vLLM check: the model is built, the config loads and the memory estimate runs
    (vLLM itself needs a GPU)."""
    from sftrl.memory import report
    from sftrl.methods import METHODS
    from sftrl.validate import load_config
    if not Path(overrides["model"]).exists():
        models(Path(overrides["model"]).parent)
    config = load_config(overrides=overrides)
    method = METHODS[config.method]
    text = report(config, method.needs_reference(config), method.needs_rollouts, 1, 80)
    result(rollout=config.rollout_backend, lines=len(text.splitlines()))


def bench_args(argv):
    """Dry run of the benchmark checks: grpo_step.py accepts exactly these arguments."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grpo_step
    args = grpo_step.parse_args(argv)
    result(device=args.device, rollout=args.rollout, settings=args.settings, steps=args.steps)


def dispatch(command, args):
    if command == "env":
        env()
    elif command == "models":
        models(args[0])
    elif command == "decode":
        decode(args[:1] == ["dry"])
    elif command == "train":
        train(json.loads(args[-1]), fsdp_on_cpu=args[0] == "--fsdp-on-cpu")
    elif command == "parity":
        parity(json.loads(args[0]))
    elif command == "validate":
        validate(json.loads(args[0]))
    elif command == "bench-args":
        bench_args(args)
    else:
        raise SystemExit(f"unknown command {command}")


def batch(directory, args):
    """Dry run: several checks in this one process (torch and transformers imported once), given as
    `NAME COMMAND ARGS... -- NAME ...`; each one's output goes to directory/NAME.log, ending EXIT 0 or 1."""
    import contextlib
    import traceback
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    groups, group = [], []
    for arg in args + ["--"]:
        if arg == "--":
            groups.append(group)
            group = []
        else:
            group.append(arg)
    for name, command, *rest in filter(None, groups):
        with open(directory / f"{name}.log", "w", buffering=1) as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            code = 0
            try:
                dispatch(command, rest)
            except BaseException:
                traceback.print_exc()
                code = 1
            print(f"EXIT {code}")


if COMMAND == "batch":
    batch(ARGS[0], ARGS[1:])
else:
    dispatch(COMMAND, ARGS)
PYTHON

# ------------------------------------------------------------------------------------------ plumbing
PASSED=0; FAILED=0; SKIPPED=0
SUMMARY=()
STARTED=0
line() {  # line STATUS NAME TEXT
    printf '%-4s  %-10s  %s (%d s)\n' "$1" "$2" "$3" $((SECONDS - STARTED))
    STARTED=$SECONDS
    SUMMARY+=("$1 $2")
    case "$1" in PASS) PASSED=$((PASSED + 1)) ;; FAIL) FAILED=$((FAILED + 1)) ;; *) SKIPPED=$((SKIPPED + 1)) ;; esac
}
# run NAME NEED_S LIMIT_S CMD...: the check's output to logs/NAME.log; 0 when it ran and printed RESULT;
# 2 when the budget left is below NEED_S (nothing run). In a dry run a check the batch ran is read back.
run() {
    local name=$1 need=$2 limit=$3 code; shift 3
    local left=$((BUDGET - SECONDS))
    if [ "$DRY_RUN" = "0" ] && [ "$left" -lt "$need" ]; then
        return 2
    fi
    [ "$DRY_RUN" = "1" ] || [ "$limit" -le "$left" ] || limit=$left
    if [ "$DRY_RUN" = "1" ] && [ -f "$OUT/batch/$name.log" ]; then
        cp "$OUT/batch/$name.log" "$OUT/logs/$name.log"
        grep -q '^EXIT 0$' "$OUT/logs/$name.log"
        code=$?
    else
        timeout --kill-after 20 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
        code=$?
    fi
    RESULT=$(grep '^RESULT ' "$OUT/logs/$name.log" | tail -1 | cut -c8-)
    if [ $code -ne 0 ] || [ -z "$RESULT" ]; then
        [ $code -eq 124 ] && REASON="timed out after ${limit} s" || REASON="exit $code"
        return 1
    fi
    return 0
}
# field EXPR: evaluate a Python expression over the last RESULT (as r)
field() { "$PY" -c "import json, sys; r = json.loads(sys.argv[1]); print($1)" "$RESULT"; }
tail_of() { tail -n 15 "$OUT/logs/$1.log" | sed 's/^/      | /'; }
check() {  # check NAME STATUS-EXPR TEXT-EXPR NEED LIMIT CMD...: run, then PASS/FAIL from a Python condition
    local name=$1 ok=$2 text=$3 need=$4 limit=$5; shift 5
    run "$name" "$need" "$limit" "$@"
    case $? in
        2) line SKIP "$name" "not enough of the time budget left ($((BUDGET - SECONDS)) s < ${need} s)" ;;
        1) line FAIL "$name" "$REASON; the end of $OUT/logs/$name.log:"; tail_of "$name" ;;
        0) if [ "$(field "$ok")" = "True" ]; then line PASS "$name" "$(field "$text")"
           else line FAIL "$name" "$(field "$text") (see $OUT/logs/$name.log)"; fi ;;
    esac
}
CHECK=("$PY" "$OUT/check.py" "$ROOT")

# ------------------------------------------------------------------------------------------ the runs
COMMON='"eval_data": null, "progress": false, "save_every": 0, "learning_rate": 1e-4'
if [ "$DRY_RUN" = "1" ]; then
    DRY=dry
    SIZE='"max_steps": 1, "batch_size": 2, "num_generations": 2, "max_completion_length": 8, "max_train_examples": 16'
    SFT='"max_steps": 2, "sft_batch_size": 4, "batch_size": 4, "max_train_examples": 16, "force_cpu_bf16": true'
else
    DRY=full
    SIZE='"max_steps": 6, "batch_size": 16, "num_generations": 8, "max_completion_length": 64'
    SFT='"max_steps": 10, "sft_batch_size": 128, "batch_size": 16'
fi
TRAIN_RUN="{\"method\": \"grpo\", \"rollout_backend\": \"torch\", $SIZE, $COMMON, \"output_dir\": \"$OUT/runs/train\"}"
BF16_RUN="{\"method\": \"sft\", \"sft_learning_rate\": 1e-3, $SFT, $COMMON, \"output_dir\": \"$OUT/runs/bf16\"}"
FSDP_RUN="{\"method\": \"grpo\", $SIZE, $COMMON, \"logprob_chunk_size\": 0, \"output_dir\": \"$OUT/runs/fsdp\"}"
VLLM_RUN="{\"method\": \"grpo\", \"model\": \"$OUT/models/qwen2\", \"rollout_backend\": \"vllm\", \"vllm_gpu_memory_utilization\": 0.3, $SIZE, $COMMON, \"output_dir\": \"$OUT/runs/vllm\"}"
VLLM_CMD=$([ "$DRY_RUN" = "1" ] && echo validate || echo train)
# FSDP's launcher; the dry run's: FSDP2 over gloo through tests/fsdp_on_cpu.py (accelerate shards only on GPUs)
if [ "$DRY_RUN" = "1" ]; then
    LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "$OUT/check.py" "$ROOT" train --fsdp-on-cpu)
else
    LAUNCH=("$PY" -m accelerate.commands.launch --config_file "$ROOT/examples/accelerate/fsdp.yaml" --num_processes 1
            "$OUT/check.py" "$ROOT" train)
fi
BENCH=(--device cuda --fixed-length --steps 4 --warmup 2 --batch-size 16 --num-generations 8 --max-completion-length 64)

MODE=$([ "$DRY_RUN" = "1" ] && echo "dry run (CPU equivalents, tiny)" || echo "GPU")
echo "gpu_check: $MODE; logs in $OUT/logs"
if [ "$DRY_RUN" = "1" ]; then
    # the single-process checks in one process (torch and transformers imported once), FSDP's beside it
    mkdir -p "$OUT/batch"
    ( timeout --kill-after 20 120 "${LAUNCH[@]}" "$FSDP_RUN"; echo "EXIT $?" ) > "$OUT/batch/fsdp.log" 2>&1 &
    FSDP_PID=$!
    timeout --kill-after 20 120 "${CHECK[@]}" batch "$OUT/batch" env env -- decode decode "$DRY" \
        -- train train "$TRAIN_RUN" -- bf16 parity "$BF16_RUN" -- vllm validate "$VLLM_RUN" > "$OUT/logs/batch.log" 2>&1
    wait "$FSDP_PID"
    echo "gpu_check: env, decode, train, bf16 and vllm ran in one process, fsdp beside it ($SECONDS s)"
fi

# env
if ! run env 10 120 "${CHECK[@]}" env; then
    line FAIL env "$REASON: $(tail -n 3 "$OUT/logs/env.log" | tr '\n' ' ')"
    echo "gpu_check: the environment does not import; stopping"; exit 1
fi
HAS_VLLM=$(field "r['vllm'] is not None")
HAS_TRL=$(field "r['trl'] is not None")
if [ "$DRY_RUN" = "0" ] && [ "$(field "r['device']")" != "cuda" ]; then
    line FAIL env "no CUDA device visible to torch $(field "r['torch']"); run with --dry-run on a CPU"
    exit 1
fi
line PASS env "$(field "'torch %s, %s, cuda %s, vLLM %s, TRL %s, transformers %s; CPU %s (bf16 instructions: %s)' % (r['torch'], r['gpu'] or 'no GPU', r['cuda'], r['vllm'] or 'not installed' + (' (' + r['vllm_error'] + ')' if r.get('vllm_error') else ''), r['trl'] or 'not installed', r['transformers'], r['cpu'], 'yes' if r['cpu_bf16'] else 'no')")"

# the tiny random Qwen2 for the vLLM run (the dry run's vllm check builds them itself)
if [ "$DRY_RUN" = "0" ] && ! run models 10 120 "${CHECK[@]}" models "$OUT/models"; then
    line FAIL models "$REASON"; tail_of models
fi

# decode: sftrl's Llama-family step against the model's forward
check decode "all(r[k]['ok'] for k in ('llama-fp32', 'llama-bf16', 'qwen2-fp32', 'qwen2-bf16'))" \
    "'%s, %d rows x %d steps; ' % (r['device'], r['rows'], r['steps']) + '; '.join('%s max|dlogit| %.2g (forward bf16 %.2g), top-1 %.3f, %.2f ms/step vs forward %.2f' % (k, v['gap'], v['forward_gap'], v['top1'], v['ms_ours'], v['ms_forward']) for k, v in r.items() if isinstance(v, dict))" \
    30 120 "${CHECK[@]}" decode "$DRY"

# train: GRPO, torch rollouts, mixed_precision=auto
check train "r['steps'] == r['asked'] and all(l == l for l in r['losses']) and r['fast_decode_steps'] > 0 and (r['device'].startswith('cuda') or $DRY_RUN == 1)" \
    "'%d/%d steps on %s (%s, mixed %s), %.2f s/step, reward %.3f, mean length %.1f, %d steps through sftrl\'s decode step' % (r['steps'], r['asked'], r['device'], r['backend'], r['mixed'], r['seconds'] / max(1, r['steps']), r['reward'] or 0, r['length'] or 0, r['fast_decode_steps'])" \
    40 150 "${CHECK[@]}" train "$TRAIN_RUN"

# bf16: SFT under bf16 autocast against float32
check bf16 "r['mixed_bf16'] == 'bf16' and r['mixed_no'] == 'no' and r['steps'] > 0 and r['gap_first'] < 0.02 and r['gap'] < 0.1" \
    "'SFT %d steps, loss bf16 vs float32: relative gap %.2g at step 1 (PASS below 0.02), at most %.2g over the steps (below 0.1); %.1f s float32, %.1f s bf16' % (r['steps'], r['gap_first'], r['gap'], r['seconds_no'], r['seconds_bf16'])" \
    40 150 "${CHECK[@]}" parity "$BF16_RUN"

# fsdp: GRPO through accelerate's FSDP2 on one process (sharded training; rollouts from the whole copy
# refreshed after each update)
check fsdp "r['backend'] == 'fsdp' and r['parameters'] == ['DTensor'] and r['steps'] == r['asked']" \
    "'%s: %d/%d steps, parameters %s, %d process(es), mixed %s, %.2f s/step' % (r['backend'], r['steps'], r['asked'], '/'.join(r['parameters']), r['processes'], r['mixed'], r['seconds'] / max(1, r['steps']))" \
    45 150 "${LAUNCH[@]}" "$FSDP_RUN"

# vllm: GRPO on the tiny Qwen2 with a colocated vLLM engine
if [ "$DRY_RUN" = "1" ]; then
    check vllm "r['rollout'] == 'vllm'" "'dry run: the vLLM run\'s model built, config loaded, memory estimate run (%d lines); vLLM itself needs a GPU' % r['lines']" \
        10 60 "${CHECK[@]}" validate "$VLLM_RUN"
elif [ "$HAS_VLLM" != "True" ]; then
    line SKIP vllm "vLLM does not import here (pip install 'sftrl[vllm]')"
else
    check vllm "r['steps'] == r['asked'] and r['rollout'] == 'vllm' and all(l == l for l in r['losses']) and (r['length'] or 0) > 1" \
        "'%d/%d GRPO steps on the tiny Qwen2 with vLLM rollouts, %.2f s/step (setup %.0f s), reward %.3f, mean length %.1f' % (r['steps'], r['asked'], r['seconds'] / max(1, r['steps']), r['setup'], r['reward'] or 0, r['length'] or 0)" \
        90 180 "${CHECK[@]}" train "$VLLM_RUN"
fi

# bench: the step benchmark against TRL (fixed length; on the GPU both engines run bf16 autocast)
BENCH_TEXT="'sftrl/TRL %.2fx (%s: sftrl %.3f s/step, TRL %.3f s/step)' % (r['passes']['identical']['sftrl_over_trl_steps_per_s'], r['passes']['identical']['settings']['mixed_precision'], r['passes']['identical']['engines']['sftrl']['summary']['step'], r['passes']['identical']['engines']['trl']['summary']['step'])"
for ROLLOUT in hf vllm; do
    NAME=$([ "$ROLLOUT" = "hf" ] && echo bench || echo bench-vllm)
    if [ "$DRY_RUN" = "1" ]; then
        check "$NAME" "r['device'] == 'cuda' and r['rollout'] == '$ROLLOUT'" \
            "'dry run: grpo_step.py accepts the arguments (%s, rollout %s, %d timed steps); TRL %s' % (r['device'], r['rollout'], r['steps'], 'installed' if $HAS_TRL else 'not installed')" \
            10 60 "${CHECK[@]}" bench-args "${BENCH[@]}" --rollout "$ROLLOUT"
    elif [ "$HAS_TRL" != "True" ]; then
        line SKIP "$NAME" "TRL does not import here (pip install -e '.[bench]')"
    elif [ "$ROLLOUT" = "vllm" ] && [ "$HAS_VLLM" != "True" ]; then
        line SKIP "$NAME" "vLLM does not import here"
    else
        NEED=$([ "$ROLLOUT" = "hf" ] && echo 90 || echo 150)
        # grpo_step.py prints its tables; the RESULT line is its JSON
        check "$NAME" "r['passes']['identical'].get('sftrl_over_trl_steps_per_s') is not None" "$BENCH_TEXT" "$NEED" 240 \
            bash -c '"$0" "$1/benchmarks/grpo_step.py" "${@:3}" --json "$2" && "$0" -c "import json, sys; print(\"RESULT \" + json.dumps(json.load(open(sys.argv[1]))))" "$2"' \
            "$PY" "$ROOT" "$OUT/$NAME.json" "${BENCH[@]}" --rollout "$ROLLOUT"
    fi
done

echo "gpu_check: $PASSED PASS, $FAILED FAIL, $SKIPPED SKIP in ${SECONDS} s ($MODE): ${SUMMARY[*]}"
[ "$FAILED" -eq 0 ]
