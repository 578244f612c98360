// Validates Istio and Gateway API documents with the npm kubernetes-models packages.
//
// Input (stdin): JSON [{id, apiVersion, kind, doc}]. Output (stdout): JSON [{id, ok, errors[]}].
// Two checks per document, both driven by the package's own generated artefacts:
//   1. the model's compiled JSON-schema validator (`new Model(doc).validate()`: types, enums,
//      required fields, patterns; the CRDs' x-kubernetes-validations CEL rules are not evaluated);
//   2. TypeScript excess-property checking against the model's `I<Kind>` interface (`tsc
//      --noEmit`), because the CRD schemas the models are generated from carry no
//      `additionalProperties: false`, so (1) alone accepts misspelled fields. Free-form fields
//      (`pluginConfig`, EnvoyFilter `patch.value`) are typed `{}` there and are checked
//      elsewhere (validate.py).
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

// apiVersion/kind -> module path (relative to node_modules) and exported class name.
const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin",
  "networking.istio.io/v1alpha3/EnvoyFilter": "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter",
  "gateway.networking.k8s.io/v1/Gateway": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway",
  "gateway.networking.k8s.io/v1/HTTPRoute": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
};

const input = JSON.parse(readFileSync(0, "utf8"));
const results = new Map(input.map((d) => [d.id, { id: d.id, ok: true, errors: [] }]));
const fail = (id, msg) => {
  const r = results.get(id);
  r.ok = false;
  r.errors.push(msg);
};

// 1. JSON-schema validation through the model class.
for (const d of input) {
  const key = `${d.apiVersion}/${d.kind}`;
  const path = MODELS[key];
  if (!path) {
    fail(d.id, `no kubernetes-models class for ${key}`);
    continue;
  }
  const mod = await import(path);
  const Cls = mod[d.kind];
  try {
    new Cls(d.doc).validate();
  } catch (e) {
    fail(d.id, `schema: ${e.message}`);
  }
}

// 2. Unknown-field check: one TypeScript file, one declaration per line, errors mapped by line.
const work = join(here, ".work");
mkdirSync(work, { recursive: true });
const lines = [];
const lineToId = new Map();
const imported = new Set();
for (const d of input) {
  const path = MODELS[`${d.apiVersion}/${d.kind}`];
  if (!path || imported.has(path)) continue;
  imported.add(path);
  lines.push(`import type { I${d.kind} as I_${imported.size} } from "${path}";`);
}
const alias = new Map([...imported].map((p, i) => [p, `I_${i + 1}`]));
for (const d of input) {
  const path = MODELS[`${d.apiVersion}/${d.kind}`];
  if (!path) continue;
  lines.push(`export const d${lines.length}: ${alias.get(path)} = ${JSON.stringify(d.doc)};`);
  lineToId.set(lines.length, d.id);
}
const tsFile = join(work, "documents.ts");
writeFileSync(tsFile, lines.join("\n") + "\n");
let out = "";
try {
  execFileSync(
    join(here, "node_modules", ".bin", "tsc"),
    ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext",
     "--target", "es2022", "--pretty", "false", tsFile],
    { cwd: here, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
  );
} catch (e) {
  out = `${e.stdout ?? ""}${e.stderr ?? ""}`;
  if (!out.trim()) out = String(e);
}
for (const line of out.split("\n")) {
  const m = /documents\.ts\((\d+),\d+\): (error .*)$/.exec(line);
  if (m) {
    const id = lineToId.get(Number(m[1]));
    if (id !== undefined) fail(id, `tsc (model types, unknown fields): ${m[2]}`);
    else throw new Error(`tsc error outside the documents: ${line}`);
  } else if (line.trim()) {
    throw new Error(`unexpected tsc output: ${line}`);
  }
}
rmSync(work, { recursive: true, force: true });
process.stdout.write(JSON.stringify([...results.values()]));
