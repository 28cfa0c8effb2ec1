#!/usr/bin/env bash
# End-to-end check of the CUDA path (issue 16), a few minutes on one GPU:
#   train       gender, 2 epochs, --amp --aug strong, on gender-data/ (generated data when it is absent)
#   resume      the same run extended by one epoch with --resume
#   torchrun    1 epoch with 2 processes when 2 GPUs are present, else 1
#   exact-age   1 epoch of ResNet-18 at 64 px on utkface/ (generated when absent): a random split,
#               ages 21-60, at most a few images per age
#   predict     predict.py with face detection on a photo and a video made from the data
#               (a test crop pasted on a background), the gender and exact-age models together
#   export      gender_age.tools.export to ONNX (checked against PyTorch)
#   predict-onnx  predict.py --onnx on the same photo and video (onnxruntime runs on the CPU)
#   age-gender  1 epoch of the dual-task model (ResNet-18 at 64 px, gender and exact-age heads) on two
#               sources at once: the gender tree and utkface/ (generated with a test CSV when absent)
#   age-gender-predict  predict.py --tta with that one checkpoint on the test crops, photo and video
#   age-gender-export   gender_age.tools.export of both heads to ONNX (checked against PyTorch)
# It ends with one line per step: its rate in images/s (training: the last epoch's, from the run's
# metrics.jsonl; prediction: records over wall time, start-up included) and beside it the compute-only
# rate of the same network on the same device and precision (synthetic batches, no data loading;
# scripts/gpu_check_helper.py says why this is not benchmarks/bench.py's).
#
#   bash scripts/gpu_check.sh          # on a CUDA machine; without a GPU: a one-line error, exit 2
#   bash scripts/gpu_check.sh --cpu    # the same steps on the CPU on tiny generated data (CI runs it:
#                                      # tests/test_gpu_check.py)
# The Python is $PYTHON, else python on PATH. Every run writes into a fresh --checkpoint-dir in a
# temporary folder, which is removed at the end (GPU_CHECK_KEEP=1 keeps it and says where).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
helper=("$PY" "$here/scripts/gpu_check_helper.py")

mode=gpu
case "${1:-}" in
  "") ;;
  --cpu) mode=cpu ;;
  -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "error: unknown argument '$1': use --cpu, or no argument on a CUDA machine" >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then
  echo "error: too many arguments: use --cpu, or no argument on a CUDA machine" >&2; exit 2
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: no python '$PY': set PYTHON to the project's python (bash scripts/setup.sh prints it)" >&2; exit 2
fi
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null) || {
  echo "error: $PY cannot import torch: set PYTHON to the project's python (bash scripts/setup.sh prints it)" >&2
  exit 2
}
if [ "$mode" = gpu ] && [ "$gpus" -lt 1 ]; then
  echo "error: no CUDA GPU visible to $PY (torch.cuda.device_count() is 0): run this on a GPU machine," \
       "or pass --cpu for the CPU mode" >&2
  exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
cleanup() {
  if [ "${GPU_CHECK_KEEP:-0}" = 1 ]; then echo "gpu-check: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
mkdir -p "$work/logs"
cd "$here"

if [ "$mode" = gpu ]; then
  dev=cuda batch=64 age_batch=128 per_age=40 steps=20 frames=16 media_faces=
  net=()  # the default network: Levi-Hassner at 227 px, as the original
  procs=$(( gpus >= 2 ? 2 : 1 ))
  gdata=gender-data utk=utkface
  if [ ! -d gender-data/train ] || [ ! -d utkface/UTKFace ]; then
    "${helper[@]}" data "$work/data" --per-class 64 >/dev/null
    [ -d gender-data/train ] || gdata="$work/data/gender"
    [ -d utkface/UTKFace ] || utk="$work/data/utkface"
  fi
  # a real face crop in the photo and video must be found by the detector; a generated one has no face
  [ "$gdata" = gender-data ] && media_faces=--need-faces
else
  # tiny: every step runs, nothing is learnt. The gender model is ResNet-18 at 64 px, a tenth of
  # Levi-Hassner's compute, and no decode worker processes are started
  dev=cpu batch=8 age_batch=8 per_age=2 steps=1 frames=6 procs=1 media_faces=
  net=(--arch resnet18 --resize 68 --crop 64)
  "${helper[@]}" data "$work/data" --per-class 6 >/dev/null
  gdata="$work/data/gender" utk="$work/data/utkface"
fi
common=(--device "$dev" --amp --no-progress --seed 0)
if [ "$mode" = cpu ]; then  # one thread per process: steady on a small, shared CI machine
  common+=(--workers 0 --threads 1)
  export OMP_NUM_THREADS=1
fi
echo "gpu-check: $mode mode, $gpus GPU(s), device $dev, gender data $gdata, exact-age data $utk, python $PY"

now() { date +%s.%N; }
declare -A rate seconds
# step NAME COMMAND...: runs it with its output in $work/logs/NAME.out and .err; a failure prints
# their last lines and a one-line error, and stops the check
step() {
  local name=$1 t0 code=0
  shift
  t0=$(now)
  "$@" >"$work/logs/$name.out" 2>"$work/logs/$name.err" || code=$?
  seconds[$name]=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$code" -ne 0 ]; then
    tail -n 15 "$work/logs/$name.out" "$work/logs/$name.err" >&2
    echo "error: step '$name' failed with exit status $code after ${seconds[$name]} s (its last lines are above)" >&2
    exit 1
  fi
  echo "gpu-check: $name ok (${seconds[$name]} s)"
}
# expect STEP TEXT: the step's output must say TEXT (what it was asked to do, it did)
expect() {
  if ! grep -qF -- "$2" "$work/logs/$1.out"; then
    echo "error: step '$1' ran, but its output lacks '$2'" >&2
    exit 1
  fi
}
train=("$PY" gender_age_classifier.py "${common[@]}")
gender=("${train[@]}" ${net[@]+"${net[@]}"} --data-dir "$gdata")

step train "${gender[@]}" --checkpoint-dir "$work/gender" -ep 2 -b "$batch" --aug strong
expect train "device $dev"
expect train "bf16, 1 process(es)"
rate[train]=$("${helper[@]}" run-rate "$work/gender" --epochs 2)

step resume "${gender[@]}" --checkpoint-dir "$work/gender" -ep 3 -b "$batch" --aug strong --resume
expect resume "resumed from $work/gender/checkpoint_last.tar"
rate[resume]=$("${helper[@]}" run-rate "$work/gender" --epochs 3)

step torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node="$procs" gender_age_classifier.py \
  "${common[@]}" ${net[@]+"${net[@]}"} --data-dir "$gdata" --checkpoint-dir "$work/ddp" -ep 1 -b "$batch"
expect torchrun "bf16, $procs process(es)"
rate[torchrun]="$("${helper[@]}" run-rate "$work/ddp" --epochs 1), $procs process(es)"

step exact-age "${train[@]}" --task exact-age --dataset utkface --data-dir "$utk" --random-split 0.2 \
  --min-age 21 --max-age 60 --max-per-class "$per_age" --arch resnet18 --resize 68 --crop 64 \
  --checkpoint-dir "$work/exact" -ep 1 -b "$age_batch"
rate[exact-age]=$("${helper[@]}" run-rate "$work/exact" --epochs 1)

step media "${helper[@]}" media "$gdata" "$work" --frames "$frames"
media=("$work/photo.jpg" "$work/clip.mp4" --every 2 --json --device "$dev")
# the default detector, yunet, ships wheels for CPython 3.10-3.11 only (detectors.py): elsewhere MTCNN
"$PY" -c "import yuface" 2>/dev/null || media+=(--detector mtcnn)
[ "$mode" = cpu ] && media+=(--workers 0)
step predict "$PY" predict.py "${media[@]}" --amp --gender-checkpoint "$work/gender/model_best.tar" \
  --exact-age-checkpoint "$work/exact/model_best.tar"
rate[predict]=$("${helper[@]}" predict-rate "$work/logs/predict.out" "${seconds[predict]}" $media_faces)

step export "$PY" -m gender_age.tools.export "$work/gender/model_best.tar" -o "$work/gender.onnx"
rate[export]="$(tail -n 1 "$work/logs/export.out")"

step predict-onnx "$PY" predict.py "${media[@]}" --onnx "$work/gender.onnx"
rate[predict-onnx]=$("${helper[@]}" predict-rate "$work/logs/predict-onnx.out" "${seconds[predict-onnx]}" $media_faces)

# the dual-task model, the toolkit's strongest (issue 18): both heads under bf16 autocast, labels
# masked per source, one report per source; then prediction and ONNX export from its one checkpoint
step age-gender "${train[@]}" --task age-gender --source "gender=$gdata" --source "utkface=$utk" \
  --face-chips off --framing-sample 0 --min-age 21 --max-age 60 --arch resnet18 --resize 68 --crop 64 \
  --checkpoint-dir "$work/dual" -ep 1 -b "$age_batch"
expect age-gender "bf16, 1 process(es)"
rate[age-gender]=$("${helper[@]}" run-rate "$work/dual" --epochs 1)

# the test crops too: with --detect auto a crop gets a prediction even where no face is found in it
step age-gender-predict "$PY" predict.py "$gdata/test" "${media[@]}" --amp --tta \
  --age-gender-checkpoint "$work/dual/model_best.tar"
expect age-gender-predict '"age_group"'
rate[age-gender-predict]=$("${helper[@]}" predict-rate "$work/logs/age-gender-predict.out" \
  "${seconds[age-gender-predict]}" $media_faces)

step age-gender-export "$PY" -m gender_age.tools.export "$work/dual/model_best.tar" -o "$work/dual.onnx"
rate[age-gender-export]="$(tail -n 1 "$work/logs/age-gender-export.out")"

# compute-only rates, one process for all: the same networks, devices and precisions as the steps
g="$work/gender/model_best.tar" e="$work/exact/model_best.tar" d="$work/dual/model_best.tar"
step compute-only "${helper[@]}" compute-only --steps "$steps" "train=$g,train,$dev,$batch,bf16" \
  "exact-age=$e,train,$dev,$age_batch,bf16" "predict=$g,infer,$dev,$batch,bf16" "predict-onnx=$g,infer,cpu,$batch,fp32" \
  "age-gender=$d,train,$dev,$age_batch,bf16" "age-gender-predict=$d,infer,$dev,$batch,bf16"
declare -A compute
while IFS=$'\t' read -r name value; do compute[$name]=$value; done <"$work/logs/compute-only.out"
compute[resume]=${compute[train]} compute[torchrun]="${compute[train]} per process" compute[export]="-"
compute[age-gender-export]="-"

echo "gpu-check: results ($mode mode, device $dev):"
for name in train resume torchrun exact-age predict export predict-onnx age-gender age-gender-predict \
    age-gender-export; do
  printf 'gpu-check: %-18s %s | compute-only: %s\n' "$name" "${rate[$name]}" "${compute[$name]}"
done
echo "gpu-check: all steps passed"
