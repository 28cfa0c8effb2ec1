# Two commands do all the set-up on a fresh machine (see README):
#   make train   - virtualenv + data links, then train the gender-and-age network on the default
#                  data into checkpoints/age-gender (make train-original: the original's two models)
#   make test    - virtualenv + data links, then the test suite (what CI runs)
ARGS ?=

.PHONY: setup train train-original test bench bench-age bench-general
setup:
	@bash scripts/setup.sh

train:
	py=$$(bash scripts/setup.sh) && $$py gender_age_classifier.py --task age-gender $(ARGS)

train-original:
	py=$$(bash scripts/setup.sh) && $$py gender_age_classifier.py $(ARGS) && $$py gender_age_classifier.py -a $(ARGS)

test:
	py=$$(bash scripts/setup.sh) && $$py -m pytest -q -n auto --dist worksteal tests

bench:
	py=$$(bash scripts/setup.sh) && $$py -m benchmarks.bench $(ARGS)

bench-age:
	py=$$(bash scripts/setup.sh) && $$py -m benchmarks.bench_age $(ARGS)

# the general age-gender model beside the peer (trains runs/general first; ARGS="--skip-train" to compare only)
bench-general:
	py=$$(bash scripts/setup.sh) && $$py -m benchmarks.bench_general $(ARGS)
