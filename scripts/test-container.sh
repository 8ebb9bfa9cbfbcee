#!/usr/bin/env bash
# Container smoke test (npm run test:container): build the mmsimd image from
# docker/Dockerfile with buildah, run it with podman, wait until its
# HEALTHCHECK (grpc.health.v1) reports SERVING, run the Python examples
# against it from the host, scrape /metrics, stop it with SIGTERM and check
# it drained and exited 0. Any failure ends the script with status 1 and a
# line starting "test-container: FAILED".
#
# Works without registry access: when docker.io/library/node:20-bookworm-slim
# is not in local storage, it is assembled from a debootstrap'ed Debian 12
# (minbase), this machine's node binary and npm, and the system CA bundle
# (npm traffic may pass a TLS-intercepting proxy), then the Dockerfile builds
# unmodified with --pull=never.
#
# Needs root (or a working rootless podman), buildah, podman, runc and
# debootstrap (installed with apt-get when missing and running as root), and
# /usr/bin/python3 with grpc and protobuf for the example clients.
#
# Environment: MMSIM_CONTAINER_SCRATCH (storage, rootfs cache; default
# $TMPDIR/mmsim-container), MMSIM_IMAGE (default localhost/mmsim:test),
# MMSIM_KEEP_IMAGE=1 keeps the image.
set -euo pipefail

cd "$(dirname "$0")/.."
T0=$(date +%s)
SCRATCH=${MMSIM_CONTAINER_SCRATCH:-${TMPDIR:-/tmp}/mmsim-container}
IMAGE=${MMSIM_IMAGE:-localhost/mmsim:test}
BASE=docker.io/library/node:20-bookworm-slim
NAME=mmsim-test-$$
PY=/usr/bin/python3

step() { echo "== test-container [$(($(date +%s) - T0))s] $*"; }
die() {
  echo "test-container: FAILED: $*" >&2
  exit 1
}

# ------------------------------------------------------------------ tools
missing=()
for t in buildah podman runc debootstrap; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    step "installing ${missing[*]} with apt-get"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman runc debootstrap >/dev/null || die "apt-get install buildah podman runc debootstrap failed"
  else
    die "missing ${missing[*]}: apt-get install -y buildah podman runc debootstrap (as root)"
  fi
fi
"$PY" -c "import grpc, google.protobuf" 2>/dev/null || die "$PY cannot import grpc: apt-get install -y python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc"

# ------------------------------------------- storage and engine settings
mkdir -p "$SCRATCH/graph" "$SCRATCH/run"
cat >"$SCRATCH/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$SCRATCH/graph"
runroot = "$SCRATCH/run"
EOF
# crun fails on these machines and default rlimits cannot be raised: runc,
# cgroupfs, modest ulimits, host network.
cat >"$SCRATCH/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_STORAGE_CONF="$SCRATCH/storage.conf" CONTAINERS_CONF="$SCRATCH/containers.conf"

# ------------------------------------------------------------ base image
if podman image exists "$BASE"; then
  step "base image $BASE present"
else
  ROOTFS="$SCRATCH/rootfs"
  if [[ ! -x "$ROOTFS/bin/sh" ]]; then
    step "debootstrap Debian 12 minbase into $ROOTFS"
    rm -rf "$ROOTFS.tmp"
    debootstrap --variant=minbase bookworm "$ROOTFS.tmp" http://deb.debian.org/debian >"$SCRATCH/debootstrap.log" 2>&1 ||
      die "debootstrap failed (see $SCRATCH/debootstrap.log)"
    mv "$ROOTFS.tmp" "$ROOTFS"
  fi
  step "assembling $BASE from the rootfs, $(command -v node) ($(node --version)) and npm"
  tar -C "$ROOTFS" -c . | podman import - localhost/debian:bookworm-minbase >/dev/null || die "podman import failed"
  NODE_BIN=$(readlink -f "$(command -v node)")
  NPM_DIR=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  [[ -f "$NPM_DIR/package.json" ]] || die "cannot find npm's directory (got $NPM_DIR)"
  ctr=$(buildah from --pull=never localhost/debian:bookworm-minbase)
  buildah copy "$ctr" "$NODE_BIN" /usr/local/bin/node >/dev/null
  buildah copy "$ctr" "$NPM_DIR" /usr/local/lib/node_modules/npm >/dev/null
  buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah run --isolation chroot "$ctr" -- sh -c '
    set -e
    ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
    ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
    groupadd -g 1000 node && useradd -m -u 1000 -g node -s /bin/sh node
    node --version >/dev/null && npm --version >/dev/null' || die "preparing the base image failed"
  # The CA bundle lets npm through a TLS-intercepting proxy; it is part of
  # this local stand-in only, never of the Dockerfile.
  buildah config --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt --env NODE_VERSION="$(node --version | tr -d v)" \
    --workingdir / --cmd node "$ctr"
  buildah commit --format docker "$ctr" "$BASE" >/dev/null || die "buildah commit of $BASE failed"
  buildah rm "$ctr" >/dev/null
  # the same Debian, for docker/client.Dockerfile (compose)
  podman tag localhost/debian:bookworm-minbase docker.io/library/debian:bookworm-slim 2>/dev/null || true
fi

# ----------------------------------------------------------------- build
step "building $IMAGE from docker/Dockerfile"
buildah bud --isolation chroot --pull=never --layers --format docker -t "$IMAGE" -f docker/Dockerfile . >"$SCRATCH/build.log" 2>&1 ||
  {
    tail -40 "$SCRATCH/build.log" >&2
    die "image build failed (log: $SCRATCH/build.log)"
  }
step "image built: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# ------------------------------------------------------------------- run
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)
cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  [[ "${MMSIM_KEEP_IMAGE:-0}" == 1 ]] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
step "starting $NAME (gRPC 127.0.0.1:$PORT, metrics 127.0.0.1:$MPORT)"
# No systemd here to time health checks (podman's complaints about that go
# to run.log): the loop below runs the image's HEALTHCHECK itself.
podman run -d --name "$NAME" --network host \
  -e MMSIM_LISTEN="127.0.0.1:$PORT" -e MMSIM_METRICS_LISTEN="127.0.0.1:$MPORT" -e MMSIM_RAM=2G \
  "$IMAGE" >/dev/null 2>"$SCRATCH/run.log" || {
  cat "$SCRATCH/run.log" >&2
  die "podman run failed"
}

healthy=0
for _ in $(seq 1 60); do
  if podman healthcheck run "$NAME" >/dev/null 2>&1; then
    healthy=1
    break
  fi
  [[ "$(podman inspect --format '{{.State.Running}}' "$NAME")" == true ]] || break
  sleep 0.5
done
if ((healthy == 0)); then
  podman logs "$NAME" >&2 || true
  die "the container never reported SERVING through its HEALTHCHECK"
fi
step "HEALTHCHECK: SERVING"
[[ "$(podman exec "$NAME" id -u)" == 1000 ]] || die "the daemon does not run as the unprivileged node user"

# --------------------------------------------------------------- clients
step "examples/python/driver.py against the container"
"$PY" examples/python/driver.py --addr "127.0.0.1:$PORT" || die "examples/python/driver.py failed"
step "examples/python/reflect_call.py (reflection only, no stubs)"
out=$("$PY" examples/python/reflect_call.py --addr "127.0.0.1:$PORT") || die "reflect_call.py failed"
echo "$out"
grep -q '^  mmsim.v1.SystemService$' <<<"$out" || die "reflection did not list mmsim.v1.SystemService"
grep -q '"kernelBaseline": "6.18"' <<<"$out" || die "GetVersion through reflection failed"
step "scraping /metrics"
"$PY" - "$MPORT" <<'EOF' || die "metrics check failed"
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
ok = [l for l in body.splitlines() if l.startswith('grpc_server_handled_total{grpc_service="mmsim.v1.AddressSpaceService",grpc_method="CreateMm"')]
assert ok and float(ok[0].split()[-1]) >= 1, "no CreateMm in grpc_server_handled_total"
assert any(l.startswith("mmsim_page_faults_total ") and float(l.split()[-1]) > 0 for l in body.splitlines()), "no faults counted"
print("  " + ok[0])
EOF

# ------------------------------------------------------------------ stop
step "podman stop (SIGTERM to node as PID 1)"
podman stop -t 15 "$NAME" >/dev/null 2>>"$SCRATCH/run.log" || {
  cat "$SCRATCH/run.log" >&2
  die "podman stop failed"
}
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
logs=$(podman logs "$NAME" 2>&1)
[[ "$code" == 0 ]] || {
  echo "$logs" >&2
  die "the daemon exited with status $code after SIGTERM"
}
grep -q '"msg":"shutting down"' <<<"$logs" || die "no shutdown line in the daemon's log"
grep -q '"forced":false,"msg":"stopped"' <<<"$logs" || {
  echo "$logs" >&2
  die "the daemon did not drain cleanly"
}
step "OK: built, SERVING, examples passed, drained and exited 0 in $(($(date +%s) - T0)) s"
