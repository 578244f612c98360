#!/usr/bin/env python3
"""Writes host-sim bench inputs for the compiled filter: a plugin config with 64 static
endpoints, OpenAI chat bodies of ~4 KiB and ~220 KiB, and one case file per body; for the relay's
A/B, configs with the relay off and on (and a control) and a sweep of smaller bodies.

Usage: filter-bench-cases.py OUT_DIR        (./build.sh bench-filter runs it)
"""
import json
import os
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

endpoints = [f"10.1.{i // 250}.{i % 250 + 1}:8000" for i in range(64)]
config = {"endpoints": endpoints, "picker": {"profile": "wasm-epp-default"}, "metrics": True}
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f)
# The relay's per-request cost, A/B (docs/replicas.md): the same module and cases with the relay
# off and on; both with snapshot intake, which the relay needs (its path is the snapshot's).
# config-control.json is relay off with a longer snapshot token: no code path changes, only the
# heap layout, which alone moves a request's wasm operator count by a few hundred either way.
#   HOST_SIM_FUEL=1 host-sim bench --wasm dist/wasm-epp.wasm --config OUT/config-relay-off.json --case OUT/chat-4k.yaml
for name, relay, token in [
    ("config-relay-off.json", None, "bench-snapshot-token-0123456789"),
    ("config-relay-on.json", {"cluster": "collector"}, "bench-snapshot-token-0123456789"),
    ("config-control.json", None, "bench-snapshot-token-" + "0123456789" * 20),
]:
    c = dict(config, snapshot={"token": token})
    if relay:
        c["relay"] = relay
    with open(os.path.join(out, name), "w") as f:
        json.dump(c, f)

sentence = "The quick brown fox jumps over the lazy dog; caf\u00e9 na\u00efve co\u00f6perate.\n "


def chat(size):
    msgs = [{"role": "system", "content": "You are a helpful assistant. " + sentence * 4}]
    turn = 0
    while len(json.dumps(msgs)) < size - 120:
        msgs.append({"role": "user" if turn % 2 == 0 else "assistant", "content": f"Turn {turn}: " + sentence * 8})
        turn += 1
    return json.dumps({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": msgs, "stream": True, "max_tokens": 512})


# chat-4k and chat-220k are the bench-filter cases; ab-* are the sweep of the relay A/B.
sweep = [(f"ab-{n}", n) for n in (1500, 3000, 6000, 9000, 12000, 20000)]
for name, size in [("chat-4k", 4096), ("chat-220k", 225280)] + sweep:
    body = chat(size)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        f.write(body)
    case = f"""# {name}: one chat request of {len(body)} bytes through the compiled filter, 64 endpoints.
env:
  allow_on_headers_stop_iteration: true
  buffer_limit: 4194304
  vm_id: wasm-epp
test:
  - name: {name}
    benchmark: true
    request_headers:
      input:
        header:
          - {{ key: ":method", value: "POST" }}
          - {{ key: ":path", value: "/v1/chat/completions" }}
          - {{ key: ":authority", value: "gateway" }}
          - {{ key: "content-type", value: "application/json" }}
    request_body:
      input: {{ file: {name}.json }}
      result:
        flow: continued
"""
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
        f.write(case)
print(out)
