# Every target installs what it needs; a fresh clone on a 2-core CPU machine is the reference.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
TA      := $(VENV)/bin/teacher-audit
APT_PKGS := dataset-fashion-mnist chromium
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install apt demo test fuzz examples bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH)
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

apt:
	@bash scripts/apt-deps.sh $(APT_PKGS)

demo: install apt
	$(TA) scan examples/teachers/backdoor_blend_smallcnn.safetensors --md demo-report.md --json demo-report.json; \
	  code=$$?; echo "exit code $$code (0 pass, 1 findings, 2 error, 3 not auditable, 4 usage)"; \
	  test $$code -le 1

test: install apt
	OMP_NUM_THREADS=2 $(PY) -m pytest

fuzz: install
	TA_FUZZ_EXAMPLES=20000 $(PY) -m pytest tests/test_fuzz_intake.py -q

examples: install apt
	$(PY) -m teacher_audit zoo build --out examples/teachers --recipe-file examples/recipes.toml

bench: install apt
	$(PY) benchmarks/run.py --suite all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
