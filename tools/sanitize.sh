#!/usr/bin/env bash
# Run the test suite against a build of the C core with AddressSanitizer and
# UndefinedBehaviorSanitizer.  Usage: tools/sanitize.sh [pytest args...]
# (default: the whole suite).  Leak checking is off: CPython itself "leaks"
# at exit.  Any sanitizer report fails the run (halt_on_error).  SIGBUS is
# left to the engine's guard and to faulthandler (handle_sigbus=0): tests
# raise it on purpose (tests/test_truncation.py).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# the whole checkout (tests read README, docs, examples and the package
# data), less git's files and what a build of the C core left
tar --exclude=./.git --exclude=./work --exclude='*.so' --exclude=__pycache__ -cf - . | tar -xf - -C "$out"
KVM_CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
KVM_LDFLAGS="-fsanitize=address,undefined" \
    python3 native/build_kvmap.py "$out" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
if grep -q "warning:" "$out/build.log"; then grep "warning:" "$out/build.log"; echo "C warnings"; exit 1; fi
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
cd "$out"
status=0
LD_PRELOAD="$asan $ubsan" \
ASAN_OPTIONS=detect_leaks=0:handle_sigbus=0:halt_on_error=1:log_path="$out/report" \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path="$out/report" \
PYTHONPATH="$out" python3 -m pytest -q -p no:cacheprovider "${@:-tests}" || status=$?
if ls "$out"/report.* > /dev/null 2>&1; then
    head -n 40 "$out"/report.*
    echo "sanitizer reported an error"
    exit 1
fi
if [ "$status" -ne 0 ]; then
    # A sanitizer that aborts the process loses pytest's buffered output.
    echo "pytest exited with $status; if nothing above says why, rerun with -x -v -s to see the test it died in"
fi
exit $status
