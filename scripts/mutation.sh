#!/usr/bin/env bash
# Mutation score of the test suite, per module: mutmut changes one thing at a time in a module
# (a flipped comparison, another constant, a dropped argument) and runs that module's tests; a
# mutant that no test fails on "survived". Not part of CI (minutes to hours of CPU).
#
# Usage: bash scripts/mutation.sh [MODULE=TESTS ...]
#   MODULE: a file of the package; TESTS: its test files, comma-separated.
#   With no argument: the modules whose mistakes a user cannot see (MODULES below).
# Writes docs/mutation.md (the score per module, with this command) and keeps mutmut's own
# results under $MUTATION_WORK (default: a temporary folder) for `mutmut show NAME` there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$here/scripts/setup.sh" 2>/dev/null | tail -n 1)"
"$py" -c "import mutmut" 2>/dev/null || "$py" -m pip install -q "mutmut==3.8.1" >&2

MODULES=(
  "gender_age/nets/ordinal.py=tests/nets/test_ordinal.py"
  "gender_age/data/age_groups.py=tests/data/test_age_groups.py,tests/train/test_age_gender.py::test_age_groups_parse,tests/train/test_age_gender.py::test_age_groups_refused,tests/train/test_guards_metrics.py,tests/predict/test_first_hour_predict.py::test_age_group_helpers"
)
[ $# -gt 0 ] && MODULES=("$@")
work="${MUTATION_WORK:-$(mktemp -d)}"
report="$here/docs/mutation.md"
rows=()
for spec in "${MODULES[@]}"; do
  module="${spec%%=*}"; tests="${spec#*=}"
  copy="$work/$(echo "$module" | tr '/.' '__')"
  rm -rf "$copy"; mkdir -p "$copy"
  # a copy of the tracked files (mutmut writes its mutants/ beside them), with the data links
  git -C "$here" ls-files -z | (cd "$here" && xargs -0 cp --parents -t "$copy")
  for d in gender-data age-data utkface fairface-540; do [ -e "$here/$d" ] && ln -s "$(realpath "$here/$d")" "$copy/$d"; done
  rm -f "$copy/pyproject.toml.mutmut"
  {
    echo "[mutmut]"
    echo "source_paths=$module"
    echo "pytest_add_cli_args_test_selection="
    tr ',' '\n' <<<"$tests" | sed 's/^/    /'
    echo "also_copy="  # mutmut's copy holds the mutated module only: the rest of the package beside it
    for p in gender_age benchmarks gender_age_classifier.py predict.py models.py datasets.py pytest.ini; do echo "    $p"; done
    echo "pytest_add_cli_args="
    echo "    -p"; echo "    no:cacheprovider"; echo "    -q"; echo "    -n"; echo "    0"
  } > "$copy/setup.cfg"
  echo "mutation: $module with $tests" >&2
  (cd "$copy" && "$py" -m mutmut run --max-children "${MUTATION_JOBS:-1}" >&2) || true
  results="$(cd "$copy" && "$py" -m mutmut results --all true 2>/dev/null || true)"
  killed=$(grep -c ": killed$" <<<"$results" || true)
  survived=$(grep -c ": survived$" <<<"$results" || true)
  other=$(grep -vc ": killed$\|: survived$" <<<"$results" || true)
  total=$((killed + survived))
  score=$([ "$total" -gt 0 ] && echo "scale=1; 100 * $killed / $total" | bc || echo "-")
  rows+=("| \`$module\` | $killed | $survived | $other | $score% |")
  grep ": survived$" <<<"$results" | sed "s#^#survived in $module: #" >&2 || true
done
{
  echo "# Mutation score of the tests"
  echo
  echo "\`bash scripts/mutation.sh\` ($(date -u +%Y-%m-%d), mutmut $("$py" -c 'import importlib.metadata as m; print(m.version("mutmut"))')):"
  echo "each module's mutants run against the test files named in the script."
  echo
  echo "| module | killed | survived | other (timeout, no tests, skipped) | killed of killed + survived |"
  echo "| --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} > "$report"
cat "$report"
