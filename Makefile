# make demo: the synthetic English recipe end to end (prints a WER table)
# make test: the test suite
# Both create or reuse .venv and install what they need; TORCH picks the torch requirement.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.asrkit-installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test install espeak clean-demo

install: $(STAMP)

$(STAMP): setup.py
	test -x "$(PY)" || $(PYTHON) -m venv "$(VENV)"
	"$(PY)" -m pip install -q "$(TORCH)"
	"$(PY)" -m pip install -q -e ".[dev,llm,plot,sot,ssl]"
	touch "$(STAMP)"

espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng; \
	  else echo "espeak-ng is missing: install it with 'sudo apt-get install espeak-ng' (or your OS's package)" >&2; exit 1; fi; }

demo: install espeak
	cd egs/synth/ASR && ./run.sh

test: install espeak
	"$(PY)" -m pytest -q tests

clean-demo:
	rm -rf egs/synth/ASR/data egs/synth/ASR/exp
