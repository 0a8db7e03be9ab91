# mseg.fleet — the two commands a new user needs are `make demo` and `make test`.
# Every target sets itself up on a fresh Debian 12 machine (run as root): Debian packages,
# a virtualenv with the pinned Python packages, and a collection path that points at this checkout.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BUILD := $(CURDIR)/.build
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/mseg/fleet
DEB_PACKAGES := nftables iproute2 iptables ipset debootstrap systemd-container openssh-client \
	python3-venv rsync procps kmod gcc libc6-dev graphviz

export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_FORCE_COLOR ?= 0
export ANSIBLE_NOCOLOR ?= 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- set-up

$(BUILD)/debs.stamp: Makefile
	@mkdir -p $(BUILD)
	@echo ">>> Debian packages: $(DEB_PACKAGES)"
	@if dpkg-query -W -f='$${Status}\n' $(DEB_PACKAGES) 2>/dev/null | grep -qv 'install ok installed' \
	   || [ "$$(dpkg-query -W -f='$${Status}\n' $(DEB_PACKAGES) 2>/dev/null | wc -l)" -ne "$(words $(DEB_PACKAGES))" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES) >/dev/null; \
	fi
	@touch $@

$(VENV)/.stamp: requirements.txt
	@echo ">>> virtualenv $(VENV) from requirements.txt"
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install -q --upgrade pip
	@$(VENV)/bin/python -m pip install -q -r requirements.txt
	@touch $@

$(COLLECTION_LINK):
	@mkdir -p $(dir $@)
	@ln -sfn $(CURDIR) $@

.PHONY: setup
setup: $(BUILD)/debs.stamp $(VENV)/.stamp $(COLLECTION_LINK) ## install Debian packages, the virtualenv and the collection path

# ---------------------------------------------------------------- the two commands

.PHONY: demo
demo: setup ## boot the lab fleet, prepare the kernels, roll the policy out, and show measured reachability beside trace's prediction
	@$(MAKE) --no-print-directory lab-up
	@timeout --kill-after=30 1200 ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/demo.yml
	@echo ">>> The lab fleet is still up: ssh in with the key in $(MSEG_LAB_STATE_DIR)/$(LAB_NAME)/, remove it with make lab-down"

.PHONY: demo-agents
demo-agents: setup ## pull mode on the lab: PKI, controllers (VIP), publish, agents; time a change until every agent has it
	@$(MAKE) --no-print-directory lab-up
	@timeout --kill-after=30 1200 ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/demo_agents.yml
	@echo ">>> The lab fleet is still up (agents pulling from the VIP 10.213.0.100): remove it with make lab-down"

.PHONY: demo-render
demo-render: setup ## render the example inventory (no hosts needed): ruleset summaries and trace matrices
	@ansible-playbook -i inventories/example playbooks/demo.yml

.PHONY: test
TEST_STAGES := unit integration artifact sanity lint docs molecule
test: setup ## run every test: unit, integration (real nftables in network namespaces), artifact, sanity, lint, docs, molecule
	@failed=""; for stage in $(TEST_STAGES); do \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory $$stage || failed="$$failed $$stage"; \
	  echo ">>> stage $$stage took $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo ">>> make test FAILED in:$$failed"; exit 1; fi; \
	echo ">>> make test: every stage passed"

# ---------------------------------------------------------------- the lab (local virtual fleet)

LAB_NAME ?= demo
LAB_INVENTORY ?= inventories/lab
export MSEG_LAB_STATE_DIR ?= $(BUILD)/lab
export MSEG_LAB_CACHE ?= /var/cache/mseg-lab

.PHONY: lab-up
lab-up: setup ## boot the hosts of inventories/lab (lab "demo") and wait until they answer SSH
	@timeout --kill-after=30 1500 ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/up.yml -e lab_name=$(LAB_NAME)

.PHONY: lab-down
lab-down: setup ## remove lab "demo": exactly the processes, mounts and interfaces it recorded
	@timeout --kill-after=30 300 ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/down.yml -e lab_name=$(LAB_NAME)

LAB_PORTS ?= ["tcp/22", "tcp/80", "tcp/5432", "udp/53", "icmp"]
.PHONY: lab-matrix
lab-matrix: setup ## measure who reaches whom in lab "demo" with real packets (LAB_PORTS='["tcp/22"]')
	@timeout --kill-after=30 600 ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/reachability.yml \
	  -e '{"reachability_ports": $(LAB_PORTS)}'

# Every scenario under molecule/ (the lab's own first: its create builds the cached root file system),
# each bounded by MOLECULE_TIMEOUT seconds; all run, the stage fails if any failed.
MOLECULE_SCENARIOS ?= $(sort $(filter-out default lab resources,$(notdir $(patsubst %/,%,$(dir $(wildcard molecule/*/molecule.yml))))))
MOLECULE_TIMEOUT ?= 1500
.PHONY: molecule
# MOLECULE_FROM_ARTIFACT=1: the scenarios get the collection from the installed tarball (make artifact-install), not
# the checkout; the lab harness and the scenarios' own tests still come from this tree.
MOLECULE_FROM_ARTIFACT ?=
molecule: setup forget-installed-copy $(if $(MOLECULE_FROM_ARTIFACT),artifact-install) ## every Molecule scenario on the lab (molecule test -s <name>)
	@failed=""; for s in lab $(MOLECULE_SCENARIOS); do \
	  echo ">>> molecule test -s $$s"; start=$$(date +%s); \
	  $(if $(MOLECULE_FROM_ARTIFACT),ANSIBLE_COLLECTIONS_PATH=$(ARTIFACT_COLLECTIONS)) \
	  timeout --kill-after=60 $(MOLECULE_TIMEOUT) molecule test -s $$s || failed="$$failed $$s"; \
	  echo ">>> molecule scenario $$s took $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo ">>> molecule scenarios failed:$$failed"; exit 1; fi

# ---------------------------------------------------------------- test stages

.PHONY: unit
unit: setup ## unit tests of the engine and plugins
	@echo ">>> unit tests"
	@python -m pytest -q -p no:cacheprovider tests/unit

.PHONY: integration
integration: setup ## real nftables rulesets in network namespaces (root)
	@echo ">>> integration tests (network namespaces)"
	@python -m pytest -q -p no:cacheprovider tests/integration

# The Galaxy artifact: built from the tracked files, installed into an empty collection path outside the checkout and
# run from there; galaxy-importer and ansible-builder (their own virtualenv: their pins need not match ours).
ARTIFACT_VENV := $(BUILD)/artifact-venv
$(ARTIFACT_VENV)/.stamp: tests/artifact/requirements.txt
	@echo ">>> artifact tools virtualenv"
	@[ -x $(ARTIFACT_VENV)/bin/python ] || $(PYTHON) -m venv $(ARTIFACT_VENV)
	@$(ARTIFACT_VENV)/bin/python -m pip install -q -r tests/artifact/requirements.txt
	@touch $@

# The tarball built from the tracked files, installed without dependencies into a collection path of its own.
ARTIFACT_DIR := $(BUILD)/artifact
ARTIFACT_COLLECTIONS := $(ARTIFACT_DIR)/collections
.PHONY: artifact-install
artifact-install: setup ## build the collection tarball from the tracked files and install it into .build/artifact/collections
	@rm -rf $(ARTIFACT_DIR) && mkdir -p $(ARTIFACT_DIR)/src
	@git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --files-from=- ./ $(ARTIFACT_DIR)/src/
	@cd $(ARTIFACT_DIR)/src && ansible-galaxy collection build --output-path $(ARTIFACT_DIR) >/dev/null
	@ANSIBLE_COLLECTIONS_PATH=$(ARTIFACT_COLLECTIONS) ansible-galaxy collection install --offline --no-deps \
	  -p $(ARTIFACT_COLLECTIONS) $(ARTIFACT_DIR)/mseg-fleet-*.tar.gz >/dev/null
	@rm -rf $(ARTIFACT_DIR)/src
	@echo ">>> installed $$(ls $(ARTIFACT_DIR)/*.tar.gz) into $(ARTIFACT_COLLECTIONS)"

.PHONY: artifact
artifact: setup $(ARTIFACT_VENV)/.stamp ## build the collection tarball, install it outside the checkout, run render and trace from it, galaxy-importer, ansible-builder create
	@echo ">>> the Galaxy artifact and the execution environment"
	@MSEG_ARTIFACT_VENV=$(ARTIFACT_VENV) python -m pytest -q -p no:cacheprovider tests/artifact

# The docs site: antsibull-docs lints the plugins' and roles' documentation and writes their pages, Sphinx builds them
# with the Markdown pages of docs/ (docs/site: configuration and front page) into .build/docs/html, warnings as errors.
# Its tools live in their own virtualenv; ansible-doc, which antsibull-docs runs, is the main virtualenv's.
DOCS_VENV := $(BUILD)/docs-venv
DOCS_OUT := $(BUILD)/docs
$(DOCS_VENV)/.stamp: docs/site/requirements.txt
	@echo ">>> docs virtualenv"
	@[ -x $(DOCS_VENV)/bin/python ] || $(PYTHON) -m venv $(DOCS_VENV)
	@$(DOCS_VENV)/bin/python -m pip install -q -r docs/site/requirements.txt
	@touch $@

.PHONY: docs
docs: setup $(DOCS_VENV)/.stamp ## the docs site (antsibull-docs: plugin and role pages, and docs/*.md) into .build/docs/html, no warnings
	@echo ">>> docs: antsibull-docs lint-collection-docs, then the site"
	@$(DOCS_VENV)/bin/antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs .
	@rm -rf $(DOCS_OUT) && mkdir -p -m 0755 $(DOCS_OUT)/src/collection
	@$(DOCS_VENV)/bin/antsibull-docs collection --use-current --squash-hierarchy --fail-on-error \
	  --dest-dir $(DOCS_OUT)/src/collection mseg.fleet >/dev/null
	@cp docs/*.md docs/site/index.md $(DOCS_OUT)/src/ && cp README.md $(DOCS_OUT)/src/readme.md
	@$(DOCS_VENV)/bin/sphinx-build -q -W --keep-going -b html -c docs/site -d $(DOCS_OUT)/doctrees \
	  $(DOCS_OUT)/src $(DOCS_OUT)/html
	@echo ">>> docs site: $(DOCS_OUT)/html/index.html"

SANITY_ARGS ?=
SANITY_VENV := $(BUILD)/sanity-venv
ANSIBLE_TEST_REQS = $(VENV)/lib/python3.11/site-packages/ansible_test/_data/requirements
GET_PIP_CACHE = $(HOME)/.ansible/test/cache/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py
ANSIBLE_TEST_PIP = $(shell sed -n "s/^ *pip='\([0-9.]*\)',/\1/p" $(VENV)/lib/python3.11/site-packages/ansible_test/_internal/python_requirements.py)

# ansible-test's own pinned sanity requirements, apart from the main virtualenv (their pins differ from
# ansible-lint's), and an offline pip bootstrap in place of the get-pip.py it cannot download here.
$(SANITY_VENV)/.stamp: requirements.txt
	@echo ">>> sanity virtualenv"
	@[ -x $(SANITY_VENV)/bin/python ] || $(PYTHON) -m venv $(SANITY_VENV)
	@$(SANITY_VENV)/bin/python -m pip install -q $$(grep -h '^ansible-core==' requirements.txt) \
	  $$(cat $(ANSIBLE_TEST_REQS)/sanity.*.txt | grep -v '^#' | sort -u)
	@touch $@

.PHONY: sanity
sanity: setup $(SANITY_VENV)/.stamp ## ansible-test sanity on a copy of the tracked and new files
	@echo ">>> ansible-test sanity"
	@mkdir -p $(dir $(GET_PIP_CACHE)) && install -m 0644 tests/sanity/get_pip_offline.py $(GET_PIP_CACHE)
	@mkdir -p $(BUILD) && base=$$(mktemp -d $(BUILD)/sanity.XXXXXX) && trap 'rm -rf "$$base"' EXIT \
	 && root=$$base/ansible_collections/mseg/fleet && mkdir -p $$root \
	 && git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --files-from=- ./ $$root/ \
	 && cd $$root && git init -q && git add -A \
	 && PATH=$(SANITY_VENV)/bin:$$PATH ansible-test sanity --python 3.11 --color no $(SANITY_ARGS)

# ansible-lint and Molecule's dependency step may install a copy of this collection under ~/.ansible, which then
# shadows the checkout for later runs: remove such a copy so every run sees the code in this tree.
STALE_COPY := $(HOME)/.ansible/collections/ansible_collections/mseg/fleet
.PHONY: forget-installed-copy
forget-installed-copy:
	@if [ -d "$(STALE_COPY)" ] && [ ! -L "$(STALE_COPY)" ]; then rm -rf "$(STALE_COPY)"; fi

.PHONY: lint
lint: setup forget-installed-copy ## ansible-lint --profile production
	@echo ">>> ansible-lint --profile production"
	@ansible-lint --profile production

.PHONY: bench
bench: setup ## run every benchmark in benchmarks/ (each prints ratios to a baseline measured side by side)
	@for bench in benchmarks/*.py; do echo ">>> $$bench"; python $$bench; done

.PHONY: clean
clean: ## remove the virtualenv and build outputs (not the lab cache)
	rm -rf $(VENV) $(BUILD) tests/output
