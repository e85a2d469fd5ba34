# Two commands do all the set-up: `make train` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of packages: training needs torch and the project's own dependencies; the tests add the
# `dev` extra (pytest, ruff, moto, s3fs, transformers, lm-eval, submitit). Each is installed once, again when
# pyproject.toml changes.
TRAIN_STAMP := $(VENV)/.installed-train
TEST_STAMP := $(VENV)/.installed-test
# torch is pinned to the CPU build that lies on this machine's disk; GPU machines bring their own torch (>=2.11).
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: setup train test test-fast lint format bench prepare results results-page clean

setup: $(TRAIN_STAMP)

$(TRAIN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $(TRAIN_STAMP)

$(TEST_STAMP): $(TRAIN_STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(TEST_STAMP)

train: $(TRAIN_STAMP)
	$(BIN)/python -m train $(ARGS)

prepare: $(TRAIN_STAMP)
	$(BIN)/python -m data.prepare $(ARGS)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(TRAIN_STAMP)
	$(BIN)/python -m bench $(ARGS)

# The CPU study behind docs/results.md: diff_v2_vs_baseline and ablations (30 runs of 200 steps, 3 seeds each,
# lr 3e-3: the baseline's best of 1e-3, 3e-3 in a probe), then lr_stability (36 runs of 80 steps, its own LR
# grid, logged every step so that the grad-norm curves show the spikes), all at model=mini: ~40 s a 200-step
# run alone, ~45 min for the whole page on an idle 2-core machine, far longer on a busy one; one thread per
# run (threads waiting for a busy core make a shared machine slower).
RESULTS_ARGS ?= model=mini data=stdlib_small trainer.seq_len=128 trainer.micro_batch=16 \
	trainer.global_batch_tokens=2048 trainer.max_steps=200 optim.warmup_steps=20 \
	trainer.eval_interval=100 trainer.eval_batches=16 trainer.diag_interval=50 \
	logging=disabled checkpoint.enabled=false checkpoint.export_safetensors=false
RESULTS_DIR ?= runs/results
STUDIES := diff_v2_vs_baseline ablations
STUDY_ARGS := optim.lr=3e-3 trainer.log_interval=10
STABILITY_ARGS := trainer.max_steps=80 optim.warmup_steps=8 trainer.eval_interval=0 trainer.diag_interval=0 \
	trainer.log_interval=1

results: $(TRAIN_STAMP)
	$(BIN)/python -m data.prepare data=stdlib_small
	for study in $(STUDIES); do OMP_NUM_THREADS=1 $(BIN)/python -m launch --multirun +experiment=$$study \
		$(RESULTS_ARGS) $(STUDY_ARGS) hydra.sweep.dir=$(RESULTS_DIR)/$$study $(ARGS) \
		|| echo "$$study: a trial failed; its row shows what it logged"; done
	OMP_NUM_THREADS=1 $(BIN)/python -m launch --multirun +experiment=lr_stability $(RESULTS_ARGS) \
		$(STABILITY_ARGS) hydra.sweep.dir=$(RESULTS_DIR)/lr_stability $(ARGS) \
		|| echo "lr_stability: a trial failed; its row shows what it logged"
	$(BIN)/python -m model.init_scale --out $(RESULTS_DIR)/lr_stability/init_scale.json \
		$(RESULTS_DIR)/lr_stability/*/config.yaml
	$(MAKE) results-page

# Only the page: docs/results.md and docs/results/<study>/*.png from the runs in $(RESULTS_DIR).
results-page: $(TRAIN_STAMP)
	$(BIN)/python -m analysis.results --intro docs/results_intro.md --out docs/results.md \
		$(addprefix $(RESULTS_DIR)/,$(STUDIES)) --stability $(RESULTS_DIR)/lr_stability

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
