#!/usr/bin/env bash
# Build the wasm32-wasip1 modules that host-sim's tests run.
#
# All module sources live in this repository (host-sim/testdata/modules, a separate cargo
# workspace): the probe, plus headers/body/config/auth/tick, which re-create from the SDK's
# public API the behaviours the proxy-wasm SDK's own examples demonstrate (the published
# `proxy-wasm` 0.2.5 crate ships no examples/ directory). They depend on `proxy-wasm =0.2.5`
# from crates.io, so the SDK's hostcall wrappers and dispatcher - code we did not write - are
# what host-sim is checked against.
#
# Output: $HOST_SIM_MODULES (default <repo>/target/host-sim-modules)/<name>.wasm
# Usage:  bash host-sim/build-test-modules.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
out="${HOST_SIM_MODULES:-$repo/target/host-sim-modules}"
build="$repo/target/host-sim-modules-build"
modules=(probe headers body config auth tick)

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
mkdir -p "$out" "$build"

(cd "$here/testdata/modules" \
  && CARGO_TARGET_DIR="$build" cargo build --quiet --release --target wasm32-wasip1 --workspace)

rel="$build/wasm32-wasip1/release"
for m in "${modules[@]}"; do
  if [ "$m" = probe ]; then crate=host_sim_probe; else crate="host_sim_module_${m}"; fi
  cp "$rel/${crate}.wasm" "$out/${m}.wasm"
done
echo "modules in $out:"
ls -l "$out"
