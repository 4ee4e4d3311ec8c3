#!/usr/bin/env bash
# CI for the example plugin (docs/examples/lstmbench-example): it installs, passes
# `lstmbench check`, runs in `lstmbench bench`, and a copy with one gradient sign
# flipped (make_broken_copy.py) FAILS `lstmbench check`.
#
# Run it with lstmbench installed in the active environment (pip install -e '.[dev]').
# It installs both packages there from a temporary copy (the source tree stays clean)
# and uninstalls them when it ends, however it ends.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'ci_check_example: FAILED: %s\n' "$*" >&2; exit 1; }

command -v lstmbench >/dev/null || fail "no lstmbench command: activate the environment lstmbench is installed in"
for dist in lstmbench-example lstmbench-example-broken; do
    # installing over it and uninstalling at the end would remove the user's own install
    if python -m pip show "$dist" >/dev/null 2>&1; then
        fail "$dist is already installed here; pip uninstall $dist first"
    fi
done

tmp="$(mktemp -d)"
cleanup() {
    python -m pip uninstall -y -q lstmbench-example lstmbench-example-broken >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

step "copy the example to $tmp and make the broken copy"
cp -R "$here/lstmbench-example" "$tmp/lstmbench-example"
rm -rf "$tmp"/lstmbench-example/{build,*.egg-info}  # a developer's editable install leaves these
python "$here/make_broken_copy.py" "$tmp/lstmbench-example-broken"
grep -n 'dW_x = -x' "$tmp/lstmbench-example-broken/lstmbench_example_broken/lstm.py"

step "pip install both"
# This environment's setuptools builds them without the network when it can make wheels
# (setuptools >= 70.1, which lstmbench[dev] brings); otherwise pip fetches one.
if python -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' 2>/dev/null; then
    isolation=--no-build-isolation
else
    isolation=
fi
python -m pip install -q --disable-pip-version-check --no-deps $isolation \
    "$tmp/lstmbench-example" "$tmp/lstmbench-example-broken"
lstmbench backends

step "lstmbench check example example-fused --quick (must pass)"
lstmbench check example example-fused --quick

step "lstmbench bench on the example (must verify and time it)"
lstmbench bench --backends example example-fused --hidden 16 --batch 8 --steps 8 --repeats 3 --no-torch --quiet

step "lstmbench check example-broken --quick (must FAIL, at the flipped gradient)"
set +e
lstmbench check example-broken --quick 2>&1 | tee "$tmp/broken.txt"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 1 ] || fail "lstmbench check example-broken exited $status, expected 1"
# exit 1 is also what a Python traceback gives: the failure must be the planted one
grep -q '^FAIL  loss_and_grads .*gradient of l0.W_x' "$tmp/broken.txt" \
    || fail "example-broken did not fail loss_and_grads at l0.W_x"
grep -q '^PASS  forward ' "$tmp/broken.txt" || fail "example-broken's forward pass, which is right, did not pass"

step "ok: the example passes, its broken copy fails (${SECONDS} s)"
