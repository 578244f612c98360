#!/usr/bin/env bash
# wasm-epp on a Google Cloud global external Application Load Balancer (Service Extensions).
#
# Exact steps, in order; run from the repository root with gcloud authenticated. Targets the
# `gcloud service-extensions` surface documented at cloud.google.com/service-extensions (plugins:
# wasm-plugins create with --main-version/--image/--plugin-config-file; route/traffic extensions
# imported from YAML) and compute backend-services/url-maps import. Unverified: never run from
# the build machines (no Google Cloud access); resource names are placeholders.
#
# What the module does here (hostProfile gcp, mode headersOnly; README "The module"): no shared
# data, timers, metrics or callouts exist on this host, so there is no live load and no per-pod
# pick. The plugin copies the client's x-model header into x-gateway-model-name (URL map ->
# backend service per model), answers 404 for models outside models.allow, and writes
# x-wasm-epp-affinity = hash(x-session-id) for the backend service's consistent hash.
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT}"
REGION="${REGION:-us-central1}"              # Artifact Registry location
VERSION="${VERSION:-v1}"
REPO="${REPO:-wasm-epp}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/plugin"

# 1. The module and its image (manifests/oci/Dockerfile).
./build.sh wasm
gcloud artifacts repositories create "$REPO" --repository-format=docker \
  --location="$REGION" --project="$PROJECT" || true   # already exists is fine
docker build -f manifests/oci/Dockerfile -t "${IMAGE}:${VERSION}" dist/
docker push "${IMAGE}:${VERSION}"
DIGEST="$(gcloud artifacts docker images describe "${IMAGE}:${VERSION}" \
  --project="$PROJECT" --format='value(image_summary.digest)')"

# 2. The plugin (global, for a global external ALB), pinned by digest, with its configuration.
#    New module versions later: gcloud service-extensions wasm-plugin-versions create.
gcloud service-extensions wasm-plugins create wasm-epp \
  --project="$PROJECT" --location=global \
  --main-version="$VERSION" \
  --image="${IMAGE}@${DIGEST}" \
  --plugin-config-file=manifests/gcp/plugin-config.json

# 3. Backend service per model with consistent hashing on x-wasm-epp-affinity, and the URL map
#    that routes on x-gateway-model-name. Replace PROJECT in the YAML files first.
gcloud compute backend-services import vllm-llama3-8b --project="$PROJECT" --global \
  --source=manifests/gcp/backend-service.yaml --quiet
gcloud compute url-maps import inference-lb --project="$PROJECT" --global \
  --source=manifests/gcp/url-map.yaml --quiet

# 4. Attach the plugin as a ROUTE extension (runs before the URL map is evaluated).
gcloud service-extensions lb-route-extensions import wasm-epp-route \
  --project="$PROJECT" --location=global \
  --source=manifests/gcp/lb-route-extension.yaml
# Alternative (admission only, no steering): lb-traffic-extension.yaml with
#   gcloud service-extensions lb-traffic-extensions import wasm-epp-traffic --location=global ...
