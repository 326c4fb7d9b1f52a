# Mahler — see README.md. Tools are built from pinned Go modules under
# tools/ and cached in ~/.cache/mahler/tools (outside the checkout).

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all build cli tools crds manifests image cluster cluster-down run stop test unit e2e bench soak lint fmt clean validate-templates fuzz
.PHONY: openapi dashboard-preview

all: build

build:
	$(CARGO) build --release --bin mahler-operator
	$(CARGO) build --release -p mahler-cli
	$(CARGO) build --release -p mahler-server

# The CLI alone: target/release/mahler and kubectl-mahler (docs/cli.md).
cli:
	$(CARGO) build --release -p mahler-cli

tools:
	hack/tools.sh build

crds:
	$(CARGO) run --quiet -p mahler-api --bin crdgen

# The REST API's OpenAPI document (a test in crates/server fails when it is stale).
openapi:
	$(CARGO) run --quiet -p mahler-server -- openapi > docs/openapi.json

# The kustomize bundle and the Argo CD health ConfigMap, rendered from the
# chart (a test fails when they are stale).
manifests:
	hack/manifests.sh

# The operator image (buildah, no daemon): docs/install.md.
image: tools build
	hack/image.sh target/release/mahler-operator

cluster: tools
	@hack/cluster.sh up mahler

cluster-down:
	@hack/cluster.sh down mahler

run: tools build
	hack/run.sh

stop:
	-@d=$$(dirname $$(hack/cluster.sh kubeconfig mahler)); for p in operator api; do [ -f $$d/$$p.pid ] && kill $$(cat $$d/$$p.pid) 2>/dev/null; done; hack/consul.sh down $$d/consul; true
	@hack/cluster.sh down mahler

test: tools
	hack/test.sh

unit:
	$(CARGO) test --workspace --lib --bins --test crds

bench: tools
	hack/bench.sh

# Churn soak (docs/benchmarks.md, "Churn"): SOAK_MINUTES (15), SOAK_SERVICES (200).
soak: tools
	hack/soak.sh

# With `make run` up: docs/images/dashboard-preview.png, the dashboard's
# panels drawn from a real run's Prometheus data (docs/telemetry.md).
dashboard-preview:
	hack/dashboard-preview.sh

# schemathesis against the REST API of `make run` (docs/api.md, "Fuzzing").
fuzz:
	hack/fuzz.sh

# `tofu validate` of every shipped template, the cloud-shaped ones included
# (builds the AWS provider into a mirror: a very large first build).
validate-templates: tools
	MAHLER_TOFU=$$(hack/tools.sh dir)/tofu \
	MAHLER_PROVIDER_MIRROR=$$(hack/tools.sh mirror) \
	MAHLER_CLOUD_PROVIDER_MIRROR=$$(hack/tools.sh mirror aws) \
	$(CARGO) test --test templates -- --include-ignored

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --test e2e -- -D warnings
	hack/deps.sh

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .cluster
