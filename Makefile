# Set-up and everyday commands. Each target creates the virtual environment on first use.
#   make demo    train SFT on the built-in sandbox and print accuracy before and after (CPU, about a minute)
#   make test    type-check the method interface and the loop's parts (mypy), then run the test suite
#   make test-float  the float-sensitive tests again, on PyTorch's plain (non-vectorised) CPU kernels
#   make bench   time a GRPO step against TRL's GRPOTrainer
# On a GPU machine install your CUDA build of torch into .venv first (or set TORCH_SPEC);
# on a CPU-only Linux box, TORCH_INDEX=https://download.pytorch.org/whl/cpu avoids the CUDA wheels.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sftrl-installed

# A second CPU kernel set for `make test-float`: `default` (no SIMD) differs most from what a machine picks itself.
FLOAT_CAPABILITY ?= default

.PHONY: demo test test-float bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, so nothing later swaps it for another build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Each demo run gets its own directory, so running it again never refuses or overwrites an earlier one.
demo: $(STAMP)
	$(VENV)/bin/sftrl train --config recipes/sandbox-sft.yaml output_dir=runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m mypy
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

# Floats differ across CPUs (vector width, fused multiply-add, thread count): the tests marked
# float_sensitive run again on other kernels, so a test that holds only on the machine it was written
# on fails here rather than on a user's first `make test`.
test-float: $(STAMP)
	ATEN_CPU_CAPABILITY=$(FLOAT_CAPABILITY) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m float_sensitive

bench: $(STAMP)
	$(PY) benchmarks/grpo_step.py --fixed-length --threads 2 --rounds 3

clean-venv:
	rm -rf $(VENV)
