#!/usr/bin/env bash
# Prepared GPU check for lbyl-pl: one H200 (16 CPU cores, no internet), started from the repository root,
# finishing well inside 8 minutes (every step has its own timeout and the whole run a budget,
# GPU_CHECK_BUDGET, default 450 s).
#
#   bash benchmarks/gpu_check.sh
#
# Environment (all optional):
#   OUT               folder for the log and JSON results (default results/gpu_check); at most 8 files land there
#   LBYL_DATA         CIFAR-10 .npz folder          (default <repo>/shared/data)
#   LBYL_CHECKPOINTS  checkpoint folder              (default <repo>/shared/checkpoints; vgg16_cifar10.pth)
#   PYTHON            interpreter (default: the first of python, python3 that imports torch)
#   GPU_CHECK_BUDGET  seconds for the whole run (default 450; 1500 for the CPU dry run, whose step limits are x3)
#   GPU_CHECK_DRY_RUN 1: the tiny CPU dry run even when a GPU is present (automatic without CUDA)
#   GPU_CHECK_PYTEST_WORKERS  pytest-xdist workers for the fast tests when xdist is installed (default 8; 0: serial)
#
# Steps (in the order they run; the summary lists them by number):
#   1   environment: nvidia-smi, torch/CUDA/cuDNN, Lightning, CPU count
#   0   install: pip install -e '.[test]' only if lbyl_pl or a package it needs at run time (torch_pruning,
#       pytorch_lightning, torchmetrics, scipy, yaml, pytest-timeout, hypothesis) does not import; offline
#       (wheels in ./.whl are used with --no-index when that folder exists); a failure is reported and the run goes on
#   2b  GPU smoke: VGG16-BN restored on the CPU (lbyl/merge/prune, r=0.5), CUDA output allclose to CPU output
#   3   bf16-mixed fine-tuning, one epoch of CIFAR-10 (.npz): finetune.py (Lightning) vs a plain PyTorch loop,
#       images/s (warm-up batches excluded) and their ratio           [needs vgg16_cifar10.pth and the .npz files]
#   3s  only when 3 is skipped: the same comparison on synthetic images (random weights if no checkpoint)
#   3c  benchmarks/lightning_overhead.py --device cuda --precision bf16-mixed --channels-last (train phase,
#       ABBA round-robin repeats): Lightning fit vs plain loop, a cross-check of 3
#   4   LBYL restoration speed: prune_and_restore of a CPU-resident network (restoration runs where the network
#       is) at 1/2/all threads, plus probes of a CUDA-resident network and CUDA unit tensors (reported, not pass
#       conditions)
#   5   restore.py --config configs/synthetic_tiny.yaml on trainer.accelerator=gpu devices=1 strategy=ddp
#   6   restoration on the model's device: benchmarks/gpu_restore_device.py restores VGG16-BN on cuda with
#       RestoreCallback for every registered method (refit off): every tensor of the restored network on cuda,
#       the same kept sets as on the CPU, output allclose to the CPU restoration's (1e-3); one OK/FAIL line each
#   2a  fast tests: python -m pytest -q -m "not slow" -x --timeout 120. tests/ has no device switch (conftest
#       pins CPU and one thread), so they run on the CPU as CI runs them; 2b is the GPU counterpart. Last, with
#       whatever the budget leaves (at most 150 s).
# Without a CUDA device the script says "no CUDA device: running the CPU dry run" and runs every step with
# tiny settings on the CPU (pytest only collects), which checks the plumbing, not the speed.
set -u -o pipefail
export PYTHONUNBUFFERED=1

cd "$(dirname "${BASH_SOURCE[0]}")/.." || { echo "cannot cd to the repository root"; exit 1; }
REPO=$(pwd)
OUT_DIR=${OUT:-results/gpu_check}
mkdir -p "$OUT_DIR" || { echo "cannot create $OUT_DIR"; exit 1; }
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"

abs_path() { case $1 in /*) echo "$1" ;; *) echo "$REPO/$1" ;; esac; }
export LBYL_DATA; LBYL_DATA=$(abs_path "${LBYL_DATA:-shared/data}")
export LBYL_CHECKPOINTS; LBYL_CHECKPOINTS=$(abs_path "${LBYL_CHECKPOINTS:-shared/checkpoints}")
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # lbyl_pl importable from benchmarks/ even when not installed

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}  # the dry run (no CUDA) sets its own, see main
DEADLINE=$((START + BUDGET))
LIMIT_SCALE=1
CKPT=$LBYL_CHECKPOINTS/vgg16_cifar10.pth

S_ID=(); S_TITLE=(); S_STATUS=(); S_SECS=(); S_NOTE=()
record() { S_ID+=("$1"); S_TITLE+=("$2"); S_STATUS+=("$3"); S_SECS+=("$4"); S_NOTE+=("$5"); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# run_step ID TITLE LIMIT CMD...: runs CMD under its own timeout (capped by what the budget leaves), its output
# also kept in $STEP_LOG; exit 0 PASS, 77 SKIPPED (the "SKIPPED: ..." line is the note), 124/137 timeout.
# NOTE_RE (grep -E pattern): the last matching output line becomes the summary note.
# POST_CHECK (function name): called after an exit status 0; a non-zero return turns PASS into FAIL.
NOTE_RE=""; POST_CHECK=""
run_step() {
  local id=$1 title=$2 limit=$3; shift 3
  local left=$((DEADLINE - $(date +%s) - 15))
  if ((left < 15)); then
    echo; echo "=== [$id] $title ==="; echo "SKIPPED: out of the ${BUDGET}s budget"
    record "$id" "$title" SKIPPED 0 "out of the ${BUDGET}s budget"; NOTE_RE=""; POST_CHECK=""; return 0
  fi
  limit=$((limit * LIMIT_SCALE))
  ((limit > left)) && limit=$left
  echo; echo "=== [$id] $title (timeout ${limit}s) ==="
  echo "+ $*"
  STEP_LOG=$TMP/step_$id.log
  local t0 rc secs status note=""
  t0=$(now)
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$STEP_LOG"
  rc=${PIPESTATUS[0]}
  secs=$(since "$t0")
  case $rc in
    0) status=PASS ;;
    77) status=SKIPPED; note=$(grep -E '^SKIPPED:' "$STEP_LOG" | tail -n 1 | sed 's/^SKIPPED: *//') ;;
    124|137) status=FAIL; note="timed out after ${limit}s" ;;
    *) status=FAIL; note="exit status $rc" ;;
  esac
  if [[ $status == PASS && -n $POST_CHECK ]]; then
    POST_NOTE=""
    if "$POST_CHECK"; then note=$POST_NOTE; else status=FAIL; note=$POST_NOTE; fi
  fi
  if [[ -n $NOTE_RE && $status != SKIPPED ]]; then
    local extra; extra=$(grep -E "$NOTE_RE" "$STEP_LOG" | tail -n 1 | cut -c1-150)
    [[ -n $extra ]] && note="${note:+$note; }$extra"
  fi
  echo "--- [$id] $status in ${secs}s${note:+ ($note)}"
  record "$id" "$title" "$status" "$secs" "$note"
  NOTE_RE=""; POST_CHECK=""
}

needs_packages() {  # ID TITLE: 0 if the run-time packages import, else records the step as SKIPPED
  [[ -z $MISSING ]] && return 0
  skip_step "$1" "$2" "not importable: $MISSING"
  return 1
}

skip_step() {  # ID TITLE REASON
  echo; echo "=== [$1] $2 ==="; echo "SKIPPED: $3"
  record "$1" "$2" SKIPPED 0 "$3"
  NOTE_RE=""; POST_CHECK=""
}

pick_python() {
  local c
  for c in ${PYTHON:-} python python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  echo "${PYTHON:-python3}"
}

main() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/lbyl-gpu-check.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  PY=$(pick_python)
  echo "lbyl-pl GPU check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), repo $REPO, python $(command -v "$PY" || echo "$PY")"
  echo "log $LOG; budget ${BUDGET}s; LBYL_DATA=$LBYL_DATA; LBYL_CHECKPOINTS=$LBYL_CHECKPOINTS"

  DRY=0
  if [[ ${GPU_CHECK_DRY_RUN:-0} == 1 ]]; then
    DRY=1; echo "GPU_CHECK_DRY_RUN=1: running the CPU dry run"
  elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    DRY=1; echo "no CUDA device: running the CPU dry run (tiny settings on one thread: checks the plumbing, not the speed)"
  fi
  if ((DRY)); then
    THREADS=1; DEV=cpu; DRYARG=(--dry-run)
    # a busy 2-core CPU needs ~25 s just to import torch + Lightning per step: looser limits, no 8-minute cap
    LIMIT_SCALE=3; BUDGET=${GPU_CHECK_BUDGET:-1500}; DEADLINE=$((START + BUDGET))
    echo "dry run: step timeouts x$LIMIT_SCALE, budget ${BUDGET}s"
  else
    # GNU nproc honours OMP_NUM_THREADS: ask it without
    THREADS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 16); ((THREADS > 16)) && THREADS=16
    DEV=cuda; DRYARG=()
  fi
  export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
  GC=(benchmarks/gpu_check.py)

  # 1: environment
  NOTE_RE='^(device|torch) '
  run_step 1 "environment" 60 bash -c '
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi || echo "nvidia-smi failed"; else echo "nvidia-smi: not found"; fi
    echo "nproc: $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  cpu: $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2-)"
    "$0" --version
    "$0" "$1" env --threads "$2" --json "$3"' "$PY" "${GC[0]}" "$THREADS" "$OUT_DIR/env.json"

  # 0: install only if something the checks import is missing
  local imports="import lbyl_pl, torch_pruning, pytorch_lightning, torchmetrics, scipy, yaml, pytest, pytest_timeout, hypothesis"
  if "$PY" -c "import lbyl_pl" >/dev/null 2>&1 && "$PY" -c "$imports" >/dev/null 2>&1; then
    echo; echo "=== [0] install ==="; echo "lbyl_pl and its run-time packages import: nothing to install"
    record 0 "install (pip install -e '.[test]')" SKIPPED 0 "not needed: everything imports"
  else
    echo; echo "missing before install:"; "$PY" - <<'EOF'
import importlib
for name in ("lbyl_pl", "torch_pruning", "pytorch_lightning", "torchmetrics", "scipy", "yaml", "pytest",
             "pytest_timeout", "hypothesis"):
    try:
        importlib.import_module(name)
    except Exception as err:
        print(f"  {name}: {type(err).__name__}: {err}")
EOF
    local where=() source=()
    if ! "$PY" -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"; then where=(--user); fi
    if compgen -G "$REPO/.whl/*.whl" >/dev/null; then source=(--no-index --find-links "$REPO/.whl"); fi
    run_step 0 "install (pip install -e '.[test]')" 75 "$PY" -m pip install --disable-pip-version-check \
      --progress-bar off --retries 0 --timeout 5 --no-build-isolation "${where[@]}" "${source[@]}" -e ".[test]"
    if [[ ${S_STATUS[-1]} != PASS ]]; then
      echo "pip install FAILED (no network on this machine? carry the missing wheels in ./.whl, see the header);"
      echo "continuing with what can run. Still missing:"
      "$PY" -c "$imports" 2>&1 | tail -n 1
    fi
  fi

  # what every later step (except the tests) needs; without it they are skipped with the reason
  MISSING=$("$PY" -c '
import importlib
bad = []
for name in ("lbyl_pl", "torch_pruning", "pytorch_lightning", "torchmetrics", "scipy", "yaml"):
    try:
        importlib.import_module(name)
    except Exception as err:
        bad.append(name)
print(" ".join(bad))' 2>/dev/null || echo "lbyl_pl")
  if [[ -n $MISSING ]]; then
    echo "NOTE: still not importable: $MISSING -> the steps that restore a network are skipped"
    [[ $MISSING == *torch_pruning* ]] && echo "      (torch-pruning is not in the H200 image: carry torch_pruning-1.6.1-py3-none-any.whl in ./.whl)"
  fi

  local have_ckpt=0 have_npz=0
  [[ -f $CKPT ]] && have_ckpt=1
  [[ -f $LBYL_DATA/cifar10_train.npz && -f $LBYL_DATA/cifar10_test.npz ]] && have_npz=1
  ((have_ckpt)) || echo "NOTE: $CKPT not found: the smoke, overhead and restore-speed steps use random weights"

  # 2b: GPU smoke (restored network on the device == on the CPU)
  local t2b="GPU smoke: restored VGG16-BN, $DEV vs CPU output (lbyl/merge/prune r=0.5)"
  NOTE_RE='^smoke: '
  needs_packages 2b "$t2b" && run_step 2b "$t2b" 60 \
    "$PY" "${GC[@]}" smoke --device "$DEV" --threads "$THREADS" "${DRYARG[@]}" --json "$OUT_DIR/smoke.json"

  # 3: bf16-mixed fine-tuning, finetune.py vs plain PyTorch
  local ft_title="bf16-mixed fine-tuning 1 epoch CIFAR-10: finetune.py vs plain loop"
  if [[ -n $MISSING ]]; then
    needs_packages 3 "$ft_title"
  elif ((have_ckpt && have_npz)); then
    NOTE_RE='^Lightning/plain'
    run_step 3 "$ft_title" 110 "$PY" "${GC[@]}" finetune --device "$DEV" --data npz --precision bf16-mixed \
      --threads "$THREADS" "${DRYARG[@]}" --json "$OUT_DIR/finetune.json"
  else
    local why=""
    ((have_ckpt)) || why="$CKPT not found"
    ((have_npz)) || why="${why:+$why; }cifar10_train.npz/cifar10_test.npz not in $LBYL_DATA"
    skip_step 3 "$ft_title" "$why"
    NOTE_RE='^Lightning/plain'
    run_step 3s "same comparison on synthetic images (fallback for 3)" 90 "$PY" "${GC[@]}" finetune \
      --device "$DEV" --data synthetic --precision bf16-mixed --threads "$THREADS" "${DRYARG[@]}" \
      --json "$OUT_DIR/finetune_synthetic.json"
  fi

  # 3c: lightning_overhead.py on the device (ABBA repeats): Lightning fit vs plain loop
  local lo=(benchmarks/lightning_overhead.py --phases train --channels-last --json "$OUT_DIR/lightning_overhead.json")
  if ((DRY)); then
    lo+=(--device cpu --precision 32-true --threads 1 --batch-size 8 --train-batches 2 --warmup-batches 1
         --repeats 1 --data synthetic)
  else
    lo+=(--device cuda --precision bf16-mixed --threads "$THREADS" --batch-size 128 --train-batches 60
         --warmup-batches 5 --repeats 3)
    if ((have_ckpt)) && [[ -f $LBYL_DATA/cifar10_test.npz ]]; then
      lo+=(--data cifar10_npz --checkpoint "$CKPT" --num-workers 8)
    else
      lo+=(--data synthetic --num-workers 0)
      ((have_ckpt)) && lo+=(--checkpoint "$CKPT")
    fi
  fi
  local t3c="lightning_overhead.py train phase on $DEV (Lightning fit vs plain, ABBA repeats)"
  NOTE_RE='^goal: '
  needs_packages 3c "$t3c" && run_step 3c "$t3c" 60 "$PY" "${lo[@]}"

  # 4: LBYL restoration speed
  NOTE_RE='^restore-speed: '
  needs_packages 4 "LBYL restoration speed (CPU path; CUDA probes)" &&
    run_step 4 "LBYL restoration speed (CPU path; CUDA probes)" 50 "$PY" "${GC[@]}" restore-speed --device "$DEV" \
    --threads "$THREADS" "${DRYARG[@]}" --json "$OUT_DIR/restore_speed.json"

  # 5: the devices=1 DDP path of restore.py
  local accel=gpu; ((DRY)) && accel=cpu
  DDP_OUT=$TMP/ddp_restore
  local t5="restore.py synthetic_tiny, accelerator=$accel devices=1 strategy=ddp"
  POST_CHECK=ddp_table_check
  needs_packages 5 "$t5" && run_step 5 "$t5" 60 env OMP_NUM_THREADS="$THREADS" \
    "$PY" restore.py --config configs/synthetic_tiny.yaml --output-dir "$DDP_OUT" trainer.accelerator=$accel \
    trainer.devices=1 trainer.strategy=ddp "restore.ratios=[0.3,0.5]" "restore.methods=[lbyl,merge,prune]"

  # 6: restoration on the model's device (RestoreCallback on cuda vs on the CPU, every method)
  local t6="restoration on $DEV via RestoreCallback, every method (VGG16-BN, vs the CPU restoration)"
  NOTE_RE='^gpu-restore-device: '
  needs_packages 6 "$t6" && run_step 6 "$t6" 90 "$PY" benchmarks/gpu_restore_device.py --device "$DEV" \
    --threads "$THREADS" --json "$OUT_DIR/restore_device.json"

  # 2a: fast tests (CPU; no device switch in tests/), with what the budget leaves
  local pt=(-m pytest -q -m "not slow" -x --timeout 120)
  echo; echo "note: tests/ has no device switch (conftest.py pins the CPU and one thread; no test reads a device"
  echo "variable), so the fast tests run on the CPU as CI runs them; step 2b covers the GPU."
  if ((DRY)); then
    pt+=(--collect-only -qq)
    run_step 2a "fast tests (dry run: collection only)" 120 env OMP_NUM_THREADS=1 "$PY" "${pt[@]}"
  else
    local workers=${GPU_CHECK_PYTEST_WORKERS:-8} ptenv=(OMP_NUM_THREADS=2)
    if ((workers > 0)) && "$PY" -c "import xdist" >/dev/null 2>&1; then
      pt+=(-n "$workers"); ptenv=(OMP_NUM_THREADS=1)
    fi
    NOTE_RE='(passed|failed|error)'
    run_step 2a "fast tests on the CPU (pytest -m 'not slow' -x)" 150 env "${ptenv[@]}" "$PY" "${pt[@]}"
  fi

  # summary
  local i fails=0 total
  total=$(( $(date +%s) - START ))
  for i in "${!S_ID[@]}"; do [[ ${S_STATUS[$i]} == FAIL ]] && fails=$((fails + 1)); done
  {
    echo
    echo "==================== GPU check summary ($( ((DRY)) && echo "CPU DRY RUN: no speed figures" || echo "$DEV"), ${total}s of ${BUDGET}s) ===================="
    for i in "${!S_ID[@]}"; do
      printf '%-4s %-8s %7ss  %s%s\n' "${S_ID[$i]}" "${S_STATUS[$i]}" "${S_SECS[$i]}" "${S_TITLE[$i]}" \
        "${S_NOTE[$i]:+  -- ${S_NOTE[$i]}}"
    done
    echo "results: $OUT_DIR ($(cd "$OUT_DIR" && ls | tr '\n' ' '))"
    echo "overall: $( ((fails)) && echo "$fails step(s) FAILED" || echo "no step failed")"
  } | tee "$OUT_DIR/summary.txt"
  ((fails == 0))
}

ddp_table_check() {
  POST_NOTE=""
  if ! grep -q '^# Data-free restoration' "$STEP_LOG"; then POST_NOTE="exit 0 but no table printed"; return 1; fi
  if [[ ! -s $DDP_OUT/table.md ]]; then POST_NOTE="exit 0 but $DDP_OUT/table.md missing"; return 1; fi
  local r
  for r in 30 50; do
    if ! grep -qE "^\|.*\b$r% *\|" "$DDP_OUT/table.md"; then POST_NOTE="table.md has no row for r=0.$((r / 10))"; return 1; fi
  done
  echo "table.md written, with rows for r=0.3 and r=0.5"
  POST_NOTE="exit 0, table printed, table.md with rows for r=0.3 and r=0.5"
  return 0
}

main "$@" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
