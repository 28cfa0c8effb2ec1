#!/usr/bin/env bash
# Mutation score of the test suite, per module: mutmut changes one thing at a time in a module
# (a flipped comparison, another constant, a dropped argument) and runs that module's tests; a
# mutant that no test fails on "survived". Not part of CI (minutes to hours of CPU).
#
# Usage: bash scripts/mutation.sh [MODULE=TESTS ...]
#   MODULE: a file of the package; TESTS: its test files, comma-separated.
#   With no argument: the modules whose mistakes a user cannot see (MODULES below).
# Updates docs/mutation.md: the row of each module run (the rows of other modules stay) and keeps mutmut's own
# results under $MUTATION_WORK (default: a temporary folder) for `mutmut show NAME` there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$here/scripts/setup.sh" 2>/dev/null | tail -n 1)"
"$py" -c "import mutmut" 2>/dev/null || "$py" -m pip install -q "mutmut==3.8.1" >&2
# one thread per process: mutmut forks a child per mutant after running the tests once, and a child
# forked from a process whose OpenMP/BLAS pool has run hangs in it until mutmut's CPU limit kills
# it, a "timeout" that hides a surviving mutant (seen: 14 of 16 such timeouts in losses.py survive)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

MODULES=(
  "gender_age/train/losses.py=tests/train/test_losses.py,tests/train/test_losses_contracts.py,tests/train/test_guards_metrics.py"
  "gender_age/nets/ordinal.py=tests/nets/test_ordinal.py"
  "gender_age/train/tasks.py=tests/train/test_tasks.py,tests/train/test_guards_metrics.py"
  "gender_age/data/age_groups.py=tests/data/test_age_groups.py,tests/train/test_age_gender.py::test_age_groups_parse,tests/train/test_age_gender.py::test_age_groups_refused,tests/train/test_guards_metrics.py,tests/predict/test_first_hour_predict.py::test_age_group_helpers"
  "gender_age/data/sources.py=tests/data/test_sources.py,tests/data/test_sources_all_ages.py,tests/data/test_leakage.py::test_select_drops_near_copies_and_says_how_many,tests/train/test_guards_metrics.py,tests/train/test_guards_sources.py,tests/train/test_age_gender.py::test_sources_labels_splits_and_leakage,tests/train/test_age_gender.py::test_sources_refuse_bad_trees,tests/train/test_age_gender.py::test_ages_outside_the_range_keep_their_gender,tests/train/test_age_gender.py::test_split_seed_holds_out_the_same_images_whatever_the_seed"
  "gender_age/data/leakage.py=tests/data/test_leakage.py,tests/data/test_leakage_thumbnails.py"
  "gender_age/faces/alignment.py=tests/faces/test_alignment.py,tests/faces/test_guards_chips.py,tests/faces/test_chips.py::test_similarity_fit_recovers_a_known_transform,tests/faces/test_chips.py::test_rolled_landmarks_land_on_the_template,tests/faces/test_chips.py::test_chip_outside_the_photo_is_black_and_the_margin_scales_the_face,tests/faces/test_chips.py::test_a_large_face_is_box_filtered_not_aliased,tests/faces/test_chips.py::test_main_face_prefers_the_large_centred_face,tests/faces/test_chips.py::test_framing_is_measured_on_the_central_square_and_moves_to_haar,tests/faces/test_chips.py::test_a_photo_of_rolled_faces_gives_upright_chips,tests/faces/test_chips.py::test_bad_chip_specs_are_refused"
  "gender_age/faces/chip_store.py=tests/faces/test_chip_store.py,tests/faces/test_guards_chips.py,tests/faces/test_chips.py::test_chips_are_cached_by_content_and_spec,tests/faces/test_chips.py::test_faceless_and_unreadable_images,tests/faces/test_chips.py::test_two_images_with_the_same_bytes_share_a_chip,tests/faces/test_chips.py::test_an_unwritable_cache_is_a_one_line_error"
  "gender_age/core/checkpointing.py=tests/core/test_checkpointing.py"
  "gender_age/nets/metadata.py=tests/nets/test_metadata.py"
  "gender_age/predict/escaping.py=tests/predict/test_escaping.py,tests/predict/test_guards_output.py"
  "gender_age/train/run_folder.py=tests/train/test_run_folder.py,tests/train/test_guards_policy.py"
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
  timeout=$(grep -c ": timeout$" <<<"$results" || true)
  notests=$(grep -c ": no tests$" <<<"$results" || true)
  total=$((killed + timeout + survived + notests))  # a mutant no test runs counts as not killed
  score=$([ "$total" -gt 0 ] && echo "scale=1; 100 * ($killed + $timeout) / $total" | bc || echo "-")
  files="$(tr ',' '\n' <<<"$tests" | python3 -c 'import sys
seen = {}
for t in sys.stdin.read().split():
    f, _, node = t.partition("::")
    seen[f] = seen.get(f, False) or bool(node)
print(", ".join(f"`{f}`" + (" (some)" if part else "") for f, part in seen.items()))')"
  row="| \`$module\` | $files | $killed | $timeout | $survived | $notests | $score% |"
  # the table in docs/mutation.md keeps one row per module: this run replaces its module's row
  python3 - "$report" "$module" "$row" <<'PY'
import sys
path, module, row = sys.argv[1:]
lines = open(path).read().split("\n")
key = f"| `{module}` |"
at = [i for i, l in enumerate(lines) if l.startswith(key)]
if at:
    lines[at[0]] = row
else:
    last = max(i for i, l in enumerate(lines) if l.startswith("| `"))
    lines.insert(last + 1, row)
open(path + ".tmp", "w").write("\n".join(lines))
PY
  mv "$report.tmp" "$report"
  # each survivor's change, to read (and to kill with a test, or to justify in docs/mutation.md)
  for name in $(grep ": survived$" <<<"$results" | sed 's/: survived$//'); do
    echo "### $name"; (cd "$copy" && "$py" -m mutmut show "$name" 2>/dev/null | grep -E '^[-+][^-+]')
  done > "$copy.survivors.txt"
  echo "$module: $killed killed, $timeout timeout, $survived survived (listed in $copy.survivors.txt)" >&2
done
grep '^| `' "$report"
