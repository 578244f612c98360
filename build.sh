#!/usr/bin/env bash
# wasm-epp build entry point. Every step a fresh machine needs is installed here.
#
#   ./build.sh demo     the main job: podsim pods + collector + the module in host-sim's gateway, a
#                       shared-prefix workload with the picker and with round-robin, side by side
#   ./build.sh serve    the same stack on fixed loopback ports for any OpenAI client (gateway
#                       http://127.0.0.1:8080/v1), until Ctrl-C; flags: --help
#   ./build.sh explain  the picker explaining sample decisions, with every reason
#   ./build.sh test     install what is missing, then every check and test (what CI runs)
#   ./build.sh wasm     the proxy-wasm module: dist/wasm-epp.wasm and dist/wasm-epp.wasm.sha256
#   ./build.sh bench    criterion benches of the request path (scan, hash, pick)
#   ./build.sh bench-filter   the compiled module in host-sim: 4 KiB and 220 KiB chat bodies, 64 endpoints;
#                       then the 4 KiB body with the relay off and on (HOST_SIM_FUEL=1: wasm operators)
#   ./build.sh bench-collector   the collector against 256 podsim pods at 50 ms: CPU, round and push latency
#   ./build.sh bench-e2e    inference-perf (PyPI, Python >= 3.12) against the stack, shared prefix,
#                       picker and round-robin side by side; flags: --help
#   ./build.sh fuzz [TARGET] [SECONDS]   coverage-guided fuzzing from the checked-in seeds (targets:
#                       scan snapshot config subset exposition framing)
#   ./build.sh setup    only the installs: every tool any command here runs
#   ./build.sh check-tools   check that each of those tools answers (CI runs setup into an empty
#                       CARGO_HOME, then this)
set -euo pipefail
cd "$(dirname "$0")"

# One target dir for every step, so CI builds each dependency once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { printf '\n==> %s\n' "$*" >&2; }

# setup installs every tool the commands run; check_tools lists the same tools and checks that
# each answers. Keep the two lists in step.
setup() {
  log "toolchain components and targets"
  rustup component add rustfmt clippy >/dev/null
  rustup target add wasm32-wasip1 wasm32-unknown-unknown >/dev/null
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
  fi
  # wasm-bindgen-test's runner must be the exact wasm-bindgen version the lock file resolves.
  # Not --locked: the crate's own lock file names a webpki-roots release crates.io no longer has.
  local wbg
  wbg=$(wasm_bindgen_version)
  if [ "$(wasm-bindgen-test-runner --version 2>/dev/null)" != "wasm-bindgen-test-runner $wbg" ]; then
    log "installing wasm-bindgen-cli $wbg (wasm-bindgen-test-runner)"
    cargo install wasm-bindgen-cli --version "$wbg"
  fi
  # Debian packages: wasm-opt (binaryen), Node.js (runs the wasm32-wasip1 test binaries) and npm
  # (the manifest validators), Python with venv (the manifest validators).
  local pkgs=()
  command -v wasm-opt >/dev/null 2>&1 || pkgs+=(binaryen)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3 python3-venv)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]}"
    apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}

# The wasm-bindgen version in Cargo.lock (wasm-bindgen-test's runner must match it).
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

# Every tool setup installs answers (prints its version); exits 1 naming those that do not.
check_tools() {
  local failed=()
  tool() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
      printf '  %-30s %s\n' "$name" "${out%%$'\n'*}"
    else
      printf '  %-30s FAILED: %s\n' "$name" "${out%%$'\n'*}"
      failed+=("$name")
    fi
  }
  target() {
    local installed
    installed=$(rustup target list --installed) && grep -qx "$1" <<<"$installed" && echo installed
  }
  log "tools (CARGO_HOME=${CARGO_HOME:-default})"
  tool "cargo fmt" cargo fmt --version
  tool "cargo clippy" cargo clippy --version
  tool "cargo nextest" cargo nextest --version
  tool "cargo fuzz" cargo fuzz --version
  tool "wasm-bindgen-test-runner $(wasm_bindgen_version)" sh -c \
    "wasm-bindgen-test-runner --version | grep -x 'wasm-bindgen-test-runner $(wasm_bindgen_version)'"
  tool "target wasm32-wasip1" target wasm32-wasip1
  tool "target wasm32-unknown-unknown" target wasm32-unknown-unknown
  tool "wasm-opt" wasm-opt --version
  tool "node" node --version
  tool "npm" npm --version
  tool "python3 >= 3.11, venv" python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11), sys.version; print(sys.version.split()[0])'
  if [ ${#failed[@]} -gt 0 ]; then
    echo "check-tools: missing or broken: ${failed[*]}" >&2
    return 1
  fi
}

# The module: release + lto + panic=abort (profile `wasm` in Cargo.toml), then wasm-opt.
# binaryen 108 (Debian) rejects rustc 1.95 output unless features are enabled (measured: without
# them wasm-opt stops with "error validating input");
# exactly the features rustc emits are named, because --all-features lets wasm-opt write types
# (GC, exceptions) that hosts such as wasmtime reject.
wasm() {
  setup
  log "building the proxy-wasm module"
  cargo build --quiet -p filter --target wasm32-wasip1 --profile wasm
  mkdir -p dist
  wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int \
    --enable-multivalue --enable-reference-types "$CARGO_TARGET_DIR/wasm32-wasip1/wasm/filter.wasm" -o dist/wasm-epp.wasm
  (cd dist && sha256sum wasm-epp.wasm > wasm-epp.wasm.sha256)
  log "dist/wasm-epp.wasm: $(stat -c %s dist/wasm-epp.wasm) bytes, sha256 $(cut -d' ' -f1 dist/wasm-epp.wasm.sha256)"
}

# cargo-fuzz needs -Z flags; RUSTC_BOOTSTRAP=1 allows them on the stable toolchain, which is
# the only one these machines can have. Inputs are capped at 64 KiB. Each run starts from a copy
# of the checked-in seeds; a crash fails the command and its input is kept in fuzz/artifacts/.
fuzz() {
  local target="${1:-scan}" secs="${2:-30}"
  local work
  work=$(mktemp -d)
  cp -r "fuzz/corpus/$target/." "$work/"
  log "fuzz $target for ${secs}s (new inputs go to $work; the checked-in seeds stay as they are)"
  if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "$work" -- \
      -max_len=65536 -max_total_time="$secs" -print_final_stats=1 >"$work.log" 2>&1); then
    tail -n 7 "$work.log"
  else
    # The panic, the failing input (kept in fuzz/artifacts/) and how to reproduce it.
    sed -n -e '/panicked at/,+4p' -e '/ERROR: /p' -e '/^Failing input:/,/^Minimize/p' "$work.log" >&2
    echo "fuzz $target: FAILED (whole log: $work.log)" >&2
    return 1
  fi
}

# A venv under the target dir holding e2e/python/requirements-$1.txt (every package pinned, from
# PyPI), made with interpreter $2 and made again when that file changes. Prints the venv's path.
py_venv() {
  local req="e2e/python/requirements-$1.txt" venv="$CARGO_TARGET_DIR/py-$1"
  if ! cmp -s "$req" "$venv/requirements.txt"; then
    log "installing $req into $venv ($("$2" --version))"
    # Inside $(...) errexit is off: every step checks.
    rm -rf "$venv" && "$2" -m venv "$venv" &&
      "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2 &&
      cp "$req" "$venv/requirements.txt" || return 1
  fi
  echo "$venv"
}

# The stack through the real OpenAI Python SDK (e2e/python/test_openai_sdk.py). The pinned SDK
# needs Python >= 3.11 with venv (setup installs Debian's); without one the test is skipped, loudly.
sdk_test() {
  if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
    log "SKIPPED: the OpenAI SDK test needs python3 >= 3.11 with venv; found: $(python3 --version 2>&1 || true)"
    return 0
  fi
  local venv
  if ! venv=$(py_venv sdk python3); then
    echo "the OpenAI SDK test FAILED: installing e2e/python/requirements-sdk.txt failed" >&2
    return 1
  fi
  cargo build --quiet --profile ci -p e2e --bin wasm-epp-stack
  if ! WASM_EPP_STACK="$CARGO_TARGET_DIR/ci/wasm-epp-stack" "$venv/bin/python" -m unittest -v e2e/python/test_openai_sdk.py; then
    echo "the OpenAI SDK test FAILED" >&2
    return 1
  fi
}

# An interpreter for inference-perf: every release on PyPI declares Requires-Python >= 3.12.
# Debian 12 has 3.11 at most; this machine image has 3.12 under pyenv.
python312() {
  local p
  for p in python3 python3.14 python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if "$p" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

test_all() {
  setup
  log "format"
  cargo fmt --all --check
  log "house rules: file and function sizes and import loops in picker-core, filter and host-sim; no pointer outside the repository"
  python3 tools/house-rules.py
  log "clippy (host, all targets)"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  log "picker-core is no_std: build for wasm32-unknown-unknown and wasm32-wasip1"
  cargo build --quiet -p picker-core --target wasm32-unknown-unknown
  cargo build --quiet -p picker-core --target wasm32-wasip1
  cargo clippy --quiet -p picker-core -p filter --target wasm32-wasip1 -- -D warnings
  wasm
  if [ -x host-sim/build-test-modules.sh ] || [ -f host-sim/build-test-modules.sh ]; then
    log "host-sim test modules (proxy-wasm SDK examples, built from the crates.io package)"
    bash host-sim/build-test-modules.sh
  fi
  log "tests (native, profile ci: optimised, our crates with debug assertions; the filter's and the"
  log "end-to-end tests load dist/wasm-epp.wasm into host-sim; the end-to-end ones send 100k requests)"
  cargo nextest run --workspace --cargo-profile ci --no-fail-fast
  log "the stack (wasm-epp-stack) through the real OpenAI Python SDK: chat, completions, streams with usage, errors"
  sdk_test
  log "picker-core tests compiled to wasm32-wasip1, run under Node's WASI"
  CARGO_TARGET_WASM32_WASIP1_RUNNER="node $PWD/tools/wasi-run.mjs" \
    cargo test --quiet -p picker-core --lib --target wasm32-wasip1
  log "the same tests compiled to wasm32-unknown-unknown, run by wasm-bindgen-test under Node"
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p picker-core --lib --target wasm32-unknown-unknown 2>&1 | tail -n 3
  log "manifests: every document through a third-party schema tool; broken ones must fail"
  bash manifests/validate/run.sh
  log "fuzz targets: build all, run the scanner for 30 s and the collector's page and framing targets for 20 s each"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O)
  fuzz scan 30
  fuzz exposition 20
  fuzz framing 20
}

case "${1:-}" in
  setup) setup ;;
  check-tools) check_tools ;;
  wasm) wasm ;;
  test) test_all ;;
  demo)
    shift
    wasm
    log "building the demo (podsim pods, collector, host-sim gateway, load client)"
    cargo build --quiet --profile tools -p e2e --bin demo
    "$CARGO_TARGET_DIR/tools/demo" "$@"
    ;;
  serve)
    shift
    wasm
    log "building the stack (podsim pods, collector, host-sim gateway)"
    cargo build --quiet --profile tools -p e2e --bin wasm-epp-stack
    exec "$CARGO_TARGET_DIR/tools/wasm-epp-stack" "$@"
    ;;
  bench-e2e)
    shift
    if ! py=$(python312); then
      echo "bench-e2e: inference-perf needs Python >= 3.12 with venv (every release on PyPI declares" \
        "Requires-Python >= 3.12); none found: not python3 ($(python3 --version 2>&1)), python3.12-3.14 on PATH" \
        "or under ${PYENV_ROOT:-$HOME/.pyenv}/versions; Debian 12's newest is 3.11" >&2
      exit 1
    fi
    wasm
    venv=$(py_venv bench "$py")
    "$venv/bin/python" e2e/python/make_tokenizer.py "$CARGO_TARGET_DIR/bench-e2e/tokenizer"
    log "building bench-e2e"
    cargo build --quiet --profile tools -p e2e --bin bench-e2e
    "$CARGO_TARGET_DIR/tools/bench-e2e" --inference-perf "$venv/bin/inference-perf" \
      --tokenizer "$CARGO_TARGET_DIR/bench-e2e/tokenizer" --out "$CARGO_TARGET_DIR/bench-e2e" "$@"
    ;;
  explain)
    shift
    cargo run --quiet --release -p picker-core --example explain -- "$@"
    ;;
  bench)
    shift
    cargo bench -p picker-core --bench pick -- "$@"
    ;;
  bench-collector)
    shift
    cargo run --quiet --release -p collector --bin collector-bench -- --pods 256 --interval 50ms --seconds 10 "$@"
    ;;
  fuzz)
    shift
    setup
    fuzz "$@"
    ;;
  bench-filter)
    wasm
    cargo build --quiet --profile tools -p host-sim
    out="$CARGO_TARGET_DIR/filter-bench"
    python3 tools/filter-bench-cases.py "$out" >/dev/null
    for c in chat-4k chat-220k; do
      "$CARGO_TARGET_DIR/tools/host-sim" bench --wasm dist/wasm-epp.wasm --config "$out/config.json" --case "$out/$c.yaml"
    done
    # The relay's per-request cost (docs/replicas.md): the same case with the relay off, then on.
    # Compare operators (HOST_SIM_FUEL=1), not times; config-control.json shows the noise floor.
    for r in off on; do
      log "relay $r (config-relay-$r.json)"
      "$CARGO_TARGET_DIR/tools/host-sim" bench --wasm dist/wasm-epp.wasm --config "$out/config-relay-$r.json" --case "$out/chat-4k.yaml"
    done
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
