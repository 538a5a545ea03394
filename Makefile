# Commands: `make demo` (main job on the bundled data), `make test` (ruff check, then pytest), and `make install`
# (only create .venv and install segaudit into it; demo and test do that first when needed).
# The install also writes segaudit-torchvision.pth into the venv's site-packages (python -m segaudit._import_hook):
# it makes `import torchvision` / `import segmentation_models_pytorch` work in any script run with the venv's
# python, without importing segaudit first (pip cannot place such a file for an editable install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch unless a GPU is present; override TORCH_SPEC / TORCH_INDEX for other builds.
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# test files run on this many pytest-xdist workers (one torch thread each; a file's tests stay on one worker)
TEST_WORKERS ?= 2

.PHONY: install demo test bench clean-venv

$(BIN)/.segaudit-installed: pyproject.toml segaudit/_import_hook.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(BIN)/pip install -q -e '.[dev]'
	@if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/pip list 2>/dev/null | grep -qiE '^(nvidia-|triton)'; then \
	  echo "error: CUDA packages were installed on a machine without a GPU; rerun with TORCH_INDEX=https://download.pytorch.org/whl/cpu after 'make clean-venv'" >&2; exit 1; fi
	$(BIN)/python -m segaudit._import_hook
	@touch $@

install: $(BIN)/.segaudit-installed

demo: $(BIN)/.segaudit-installed
	$(BIN)/segaudit demo --out reports/demo --force

test: $(BIN)/.segaudit-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(BIN)/.segaudit-installed
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
