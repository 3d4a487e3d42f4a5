# Two commands do everything on a fresh clone (only Python 3.11 needed):
#   make demo   — set up, then run the whole DVC chain on the embedded default model
#   make test   — set up, then run the test suite
#   make check-demo — run the demo in a copy of the project and check what it promises (CI runs it too)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test check-demo serve ui clean

setup: $(VENV)/.installed

# torch goes in first and alone: the CPU build of 2.13.0. pyproject pins torch==2.13.0 too, so no
# later dependency can upgrade it or pull CUDA (nvidia-*) wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=25,<26"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,deepspeed]"
	@! $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia-' || (echo "CUDA wheels were pulled in: refusing" && exit 1)
	touch $@

demo: setup
	DVC_NO_ANALYTICS=1 $(BIN)/lathe demo

test: setup
	DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs

check-demo: setup
	DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs -m demo tests/test_demo.py

serve: setup
	$(BIN)/lathe serve

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf artifacts .lathe mlflow.db mlartifacts
