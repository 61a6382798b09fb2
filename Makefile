# vtp-scaling — the two set-up commands are `make demo` and `make test`; `make help` lists the rest.
SHELL := /bin/bash
PY      ?= .venv/bin/python
PYTHON  ?= python3
CHECK   ?=
PORT    ?= 5000
SCALE   ?= demo
EXECUTOR ?= local
DRY     ?=
DEVICE  ?=
RESULTS ?= results
export DEVICE
ifneq ($(wildcard /tmp/vtp-slurm/slurm.conf),)
export SLURM_CONF ?= /tmp/vtp-slurm/slurm.conf
endif
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

SWEEP_FLAGS := --executor $(EXECUTOR) $(if $(DRY),--dry,) $(if $(DEVICE),--device $(DEVICE),)
CLI := $(PY) -m cluster --results $(RESULTS)

SIZE ?= tiny
RECIPE ?= clip_ssl_ae
A ?= ae
B ?= clip_ssl_ae
KILLS ?= 10
JOBS ?= 1
# JOBS > 1 (local executor): that many sweep processes share the study's stages (leases keep them apart), each
# with its share of the CPUs: small models run no faster on 2 threads than on 1, so 2 processes of 1 thread
# finish a CPU study in about half the time (the demo uses JOBS=2)
THREADS := $(if $(filter 1,$(JOBS)),$(OMP_NUM_THREADS),$(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(JOBS))); echo $$((t > 0 ? t : 1))))

.PHONY: help install demo test sweep rehearse status collect report compare tune faults mlflow-ui bench gpu-check slurm-up slurm-down clean-results

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: SCALE=<study in sweeps/> EXECUTOR=local|slurm|ray DRY=1 DEVICE=cpu|cuda RESULTS=results PORT=5000"
	@echo "  install:   PY=<python of an existing env> installs what that env lacks into it (default .venv, created with"
	@echo "             PYTHON=python3 -m venv, any Python >= 3.10); CHECK=1 reports what is missing and installs nothing"

install: ## install into .venv (or PY=<env's python>) what it lacks; no root, no system packages; CHECK=1 only reports
	@PY='$(PY)' PYTHON='$(PYTHON)' ./scripts/install.sh $(if $(CHECK),--check,)

# A study's Debian data: installed (as root, or with sudo for the set-up commands) only when the study reads
# Fashion-MNIST from the Debian path and it is missing; otherwise nothing is called (scripts/install_system.sh).
APT_SUDO ?=
study_data = need=$$($(PY) -m cluster.system_packages $(1)) && ./scripts/install_system.sh $(APT_SUDO) $$need

demo: install ## install, run the embedded default study end to end, write results/demo/
	$(MAKE) --no-print-directory sweep SCALE=demo APT_SUDO=--sudo JOBS=2
	$(MAKE) --no-print-directory report SCALE=demo

test: install ## run the test suite (installs Debian Fashion-MNIST and chromium, for the report screenshot test)
	./scripts/install_system.sh --sudo dataset-fashion-mnist chromium
	$(PY) -m pytest -q

sweep: install ## run a study: SCALE=<study> [EXECUTOR=local] [DRY=1] [DEVICE=cpu] [JOBS=1]
	@$(call study_data,$(SCALE))
	@if [ "$(JOBS)" -gt 1 ] && [ "$(EXECUTOR)" = local ] && [ -z "$(DRY)" ]; then \
	  for i in $$(seq 2 $(JOBS)); do \
	    OMP_NUM_THREADS=$(THREADS) $(CLI) sweep $(SCALE) $(SWEEP_FLAGS) --no-progress --no-mlflow > /dev/null & \
	  done; \
	fi; \
	echo "$(CLI) sweep $(SCALE) $(SWEEP_FLAGS)  (processes: $(JOBS), threads each: $(THREADS))"; \
	OMP_NUM_THREADS=$(THREADS) $(CLI) sweep $(SCALE) $(SWEEP_FLAGS); rc=$$?; wait; exit $$rc

rehearse: install ## a study end to end in miniature on this CPU, its invariants checked: SCALE=<study>
	@$(call study_data,$(SCALE))
	$(PY) -m cluster.rehearse $(SCALE) --results $(RESULTS)/rehearse

status: install ## counts per stage and status, and every failure's reason: SCALE=<study>
	$(CLI) status $(SCALE)

collect: install ## build results/<study>/runs.parquet (+ MLflow index): SCALE=<study>
	$(CLI) collect $(SCALE)

report: install ## plots + results/<study>/report.html: SCALE=<study>
	$(CLI) collect $(SCALE) --no-mlflow
	@t=$$($(CLI) table $(SCALE)) && d=$$(dirname $$t) && set -x && $(PY) -m analysis report --table $$t --out $$d

compare: install ## compute multiplier between two recipes' fitted laws: SCALE=<study> A=ae B=clip_ssl_ae
	$(CLI) collect $(SCALE) --no-mlflow
	@t=$$($(CLI) table $(SCALE)) && set -x && $(PY) -m analysis compare --table $$t $(A) $(B)

tune: install ## Ray Tune ASHA learning-rate search for the tokenizer: SIZE=<encoder size> [RECIPE=clip_ssl_ae] [SCALE=<study>]
	@$(call study_data,$(SCALE))
	$(CLI) tune $(SIZE) --recipe $(RECIPE) $(if $(filter-out demo,$(SCALE)),--study $(SCALE),--study demo)

faults: install ## SIGKILL the sweep driver KILLS times at random moments; the final table must equal an uninterrupted run
	@$(call study_data,$(SCALE))
	$(PY) -m cluster.faults $(SCALE) --kills $(KILLS) --workdir $(RESULTS)/faults-$(SCALE)

mlflow-ui: install ## the MLflow index (every study's runs table, re-indexed first) on http://127.0.0.1:PORT, local only: [PORT=5000]
	exec $(PY) -m cluster.tracking ui --results $(RESULTS) --port $(PORT)

bench: install ## benchmarks with ratios against references measured in the same run
	@$(PY) -c "import diffusers" 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench

gpu-check: install ## on one GPU (<= 8 min): MFU, eager vs compiled loss, memory plan vs measured, a micro study; one table
	$(PY) -m bench.gpu_check --out $(RESULTS)/gpu-check

slurm-up: ## install (Debian) and start a one-node SLURM on this machine (for EXECUTOR=slurm tests and demos)
	./scripts/slurm_local.sh up

slurm-down: ## stop the one-node SLURM by its PID files
	./scripts/slurm_local.sh down

clean-results: ## delete results/ (outputs only)
	find $(RESULTS) -mindepth 1 ! -name README.md -delete
