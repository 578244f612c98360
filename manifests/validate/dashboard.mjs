// Validates Grafana dashboards (classic JSON model) against the types of npm @grafana/schema.
//
// Input (stdin): JSON [{id, doc}]. Output (stdout): JSON [{id, errors[]}].
// @grafana/schema ships TypeScript types generated from Grafana's CUE schemas, not a JSON
// schema, so the check is `tsc --noEmit --strict` of one declaration per object, which rejects
// missing required fields, wrong types, enum values outside the schema and (excess-property
// checking) unknown fields:
//   - the dashboard without its panels as `Dashboard` (title, schemaVersion, templating with
//     `VariableModel`, annotations, time, ...);
//   - each row as `RowPanel`;
//   - each panel as `Panel<Options, FieldConfig>` of its plugin's panelcfg types
//     (timeseries, state-timeline), its `options` as that plugin's `Options` (Partial: Grafana
//     fills defaults for options left out);
//   - string enums of the schema (TypeScript enums there) are matched by their values, which is
//     what a JSON document holds (type Json<T> below);
//   - each query as `DataQuery` plus the Prometheus query fields declared below: the package
//     does not carry the Prometheus query type (it lives in @grafana/prometheus), so those few
//     field names are this file's, not the schema's.
// A panel type with no mapping here is an error, so nothing escapes the type check.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const PANELCFG = "@grafana/schema/dist/esm/raw/composable";
const PANEL_TYPES = {
  timeseries: `${PANELCFG}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen`,
  "state-timeline": `${PANELCFG}/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen`,
};

const input = JSON.parse(readFileSync(0, "utf8"));
const results = new Map(input.map((d) => [d.id, { id: d.id, errors: [] }]));

const lines = [
  `import type { Dashboard, DataQuery, Panel, RowPanel } from "@grafana/schema";`,
];
const alias = new Map();
for (const [type, path] of Object.entries(PANEL_TYPES)) {
  const a = `P${alias.size}`;
  alias.set(type, a);
  lines.push(`import type { Options as ${a}O, FieldConfig as ${a}F } from "${path}";`);
}
lines.push(
  `type PromQuery = DataQuery & { expr: string; legendFormat?: string; range?: boolean; instant?: boolean;`,
  `  interval?: string; format?: "time_series" | "table" | "heatmap"; editorMode?: "code" | "builder"; exemplar?: boolean };`,
  `type Typed<O, F> = Omit<Panel<O, F>, "targets" | "options"> & { targets: PromQuery[]; options: Partial<O> };`,
  // The schema declares its string enums as TypeScript enums; a JSON document holds their values,
  // so every string enum is read as the union of its values (`${E}`), recursively.
  `type Json<T> = T extends string ? \`\${T}\` : T extends number | boolean | null | undefined ? T`,
  `  : T extends (infer U)[] ? Json<U>[] : T extends object ? { [K in keyof T]: Json<T[K]> } : T;`,
);
const where = new Map(); // line number -> [id, what]
const decl = (id, what, type, value) => {
  lines.push(`export const d${lines.length}: Json<${type}> = ${JSON.stringify(value)};`);
  where.set(lines.length, [id, what]);
};
for (const { id, doc } of input) {
  const { panels = [], ...shell } = doc;
  decl(id, "dashboard", "Omit<Dashboard, \"panels\">", shell);
  const all = [];
  for (const p of panels) {
    all.push(p);
    if (p.type === "row") all.push(...(p.panels ?? []));
  }
  for (const p of all) {
    const what = `panel ${p.id} (${p.type}) "${p.title}"`;
    if (p.type === "row") {
      decl(id, what, "RowPanel", p);
    } else if (alias.has(p.type)) {
      const a = alias.get(p.type);
      decl(id, what, `Typed<${a}O, ${a}F>`, p);
    } else {
      results.get(id).errors.push(`${what}: no @grafana/schema panelcfg mapping for panel type ${JSON.stringify(p.type)}`);
    }
  }
}

const work = join(here, ".work");
mkdirSync(work, { recursive: true });
const tsFile = join(work, "dashboards.ts");
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
  const m = /dashboards\.ts\((\d+),\d+\): (error .*)$/.exec(line);
  if (m && where.has(Number(m[1]))) {
    const [id, what] = where.get(Number(m[1]));
    results.get(id).errors.push(`@grafana/schema (tsc): ${what}: ${m[2]}`);
  } else if (line.trim()) {
    throw new Error(`unexpected tsc output: ${line}`);
  }
}
rmSync(work, { recursive: true, force: true });
process.stdout.write(JSON.stringify([...results.values()]));
