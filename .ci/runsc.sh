#!/usr/bin/env bash
# gVisor for `sandbox: gvisor` services (docs/docker.md, "Sandbox"), as root, safe to run again:
#   1. install Debian's runsc package when it is missing;
#   2. declare the runtime in /etc/docker/daemon.json, merged into what the file already says;
#   3. make a running dockerd read it again (SIGHUP: running containers are not touched).
# runsc under Docker must share the host's network stack: without `--network=host` it refuses
# "cannot run with network enabled in root network namespace" in every container.
set -euo pipefail

RUNTIME="${FIELDGATE_GVISOR_RUNTIME:-runsc}"
DAEMON_JSON="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"

export DEBIAN_FRONTEND=noninteractive
if ! command -v runsc >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq runsc >/dev/null
fi

changed="$(python3 - "$DAEMON_JSON" "$RUNTIME" "$(command -v runsc)" <<'EOF'
import json, os, sys
path, name, binary = sys.argv[1:]
try:
    with open(path, encoding="utf-8") as f:
        text = f.read()
except FileNotFoundError:
    text = ""
config = json.loads(text) if text.strip() else {}
wanted = {"path": binary, "runtimeArgs": ["--network=host", "--host-uds=all"]}
runtimes = config.setdefault("runtimes", {})
if runtimes.get(name) == wanted:
    print("no")
    sys.exit(0)
runtimes[name] = wanted
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
with open(path + ".part", "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".part", path)
print("yes")
EOF
)"

if [ "$changed" = yes ]; then
  echo "runsc.sh: declared runtime $RUNTIME in $DAEMON_JSON"
fi
if pid="$(pidof dockerd)"; then
  if [ "$changed" = yes ] || ! docker info --format '{{json .Runtimes}}' | grep -q "\"$RUNTIME\""; then
    kill -HUP $pid
    for _ in $(seq 20); do
      docker info --format '{{json .Runtimes}}' | grep -q "\"$RUNTIME\"" && break
      sleep 0.5
    done
  fi
  docker info --format '{{json .Runtimes}}' | grep -q "\"$RUNTIME\"" \
    || { echo "runsc.sh: dockerd did not take runtime $RUNTIME from $DAEMON_JSON" >&2; exit 1; }
fi
