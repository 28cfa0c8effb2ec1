# Two commands do all the set-up on a fresh machine (see README):
#   make train   - virtualenv + data links, then train gender and age on the default data
#   make test    - virtualenv + data links, then the test suite
PY = $(shell bash scripts/setup.sh)
ARGS ?=

.PHONY: setup train test bench
setup:
	@bash scripts/setup.sh >/dev/null

train:
	$(PY) gender_age_classifier.py $(ARGS)
	$(PY) gender_age_classifier.py -a $(ARGS)

test:
	$(PY) -m pytest -q tests

bench:
	$(PY) bench.py $(ARGS)
