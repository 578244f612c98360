// Runs a wasm32-wasip1 binary (a cargo test harness) under Node's WASI, as a cargo target runner:
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node tools/wasi-run.mjs" cargo test --target wasm32-wasip1
// The module gets its arguments and no filesystem or network: a test that passes here ran as
// wasm with only what a proxy-wasm host offers (clock, random, stdout/stderr).
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [wasmPath, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [wasmPath, ...args], env: { RUST_BACKTRACE: '0' }, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const code = wasi.start(instance);
process.exit(code ?? 0);
