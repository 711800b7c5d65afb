#!/usr/bin/env bash
# The two commands a newcomer needs (see README.md):
#   ./dev.sh run    set up (first time) and run the node on its embedded default: the demo network
#   ./dev.sh test   set up (first time) and run the whole test suite
# Set-up is a virtualenv in .venv (override with JSDISTRIBUTOR_VENV) with the
# package and its test extras installed; it is redone when setup.cfg changes.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${JSDISTRIBUTOR_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.jsdistributor-installed-$(cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "installing jsdistributor and its test dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q -e '.[test]' --config-settings editable_mode=compat >&2
    rm -f "$VENV"/.jsdistributor-installed-*
    touch "$stamp"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  run)
    setup
    exec "$VENV/bin/jsdistributor" demo "$@"
    ;;
  test)
    setup
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    set +e
    PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" -m twisted.trial --jobs="${TRIAL_JOBS:-2}" "${@:-tests}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # A plain closing line: "N passed, N failed, N skipped".
    summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -n 1 || true)
    num() { { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 | head -n1; } || true; }
    passed=$(num successes)
    failures=$(num failures) errors=$(num errors) unexpected=$(num unexpectedSuccesses)
    failed=$(( ${failures:-0} + ${errors:-0} + ${unexpected:-0} ))
    skipped=$(num skips)
    if [ -z "$summary" ]; then
      echo "trial printed no result line" >&2
      failed=$((failed+1)); [ "$status" = 0 ] && status=1
    fi
    echo "${passed:-0} passed, $failed failed, ${skipped:-0} skipped"
    exit "$status"
    ;;
  *)
    echo "usage: ./dev.sh run [demo options] | ./dev.sh test [trial test names]" >&2
    exit 2
    ;;
esac
