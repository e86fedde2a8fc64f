#!/usr/bin/env bash
# compose/ for real deployments, checked with the tools at hand (no container is started):
#   1. `docker compose config -q` accepts compose/compose.yml (skipped where docker compose is missing);
#   2. the file's shape: every long-running service has a healthcheck, every depends_on names a
#      service, every file it mounts exists, the Tributary processes get the TRIBUTARY_* variables
#      of stack/env.sh, and Prometheus scrapes each Tributary process on the port it serves
#      (skipped where python has no yaml module);
#   3. `promtool check config` accepts compose/prometheus/prometheus.yml;
#   4. the Grafana dashboard is valid JSON, its datasource uid is the provisioned one, and every
#      metric it queries is one the code registers.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
compose="$root/compose/compose.yml"
prom_config="$root/compose/prometheus/prometheus.yml"
dashboard="$root/compose/grafana/dashboards/tributary.json"
datasource="$root/compose/grafana/provisioning/datasources/prometheus.yml"

passed=0 failed=0 skipped=0
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $what"; else failed=$((failed + 1)); echo "FAIL $what"; return 1; fi
}
skip() { skipped=$((skipped + 1)); echo "skip: $*"; }

# 1. The compose tool's own validation.
if docker compose version >/dev/null 2>&1; then
  check "docker compose config -q accepts compose/compose.yml" \
    docker compose -f "$compose" config -q
else
  skip "docker compose not available"
fi

# 2. The file's shape.
shape() {
  python3 - "$compose" "$prom_config" "$root/stack/env.sh" <<'EOF'
import os, re, sys, yaml
compose_path, prom_path, env_path = sys.argv[1:4]
base = os.path.dirname(compose_path)
doc = yaml.safe_load(open(compose_path))
services = doc["services"]
problems = []
wanted = {"kafka", "schema-registry", "postgres", "mongodb", "redis", "elasticsearch",
          "prometheus", "grafana", "setup", "processors", "gateway",
          "sink-postgres", "sink-mongodb", "sink-redis", "sink-elasticsearch"}
for name in sorted(wanted - services.keys()):
    problems.append(f"service {name} is missing")
env_vars = set(re.findall(r"export (TRIBUTARY_[A-Z_]+_(?:URL|BROKERS))=", open(env_path).read()))
for name, svc in services.items():
    one_shot = svc.get("restart") == "no"
    hc = svc.get("healthcheck") or {}
    if not one_shot and (hc.get("disable") or not hc.get("test")):
        problems.append(f"{name}: no healthcheck")
    deps = svc.get("depends_on") or {}
    for dep in (deps if isinstance(deps, (list, dict)) else []):
        if dep not in services:
            problems.append(f"{name}: depends_on unknown service {dep}")
    for vol in svc.get("volumes") or []:
        src = vol.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(os.path.join(base, src)):
                problems.append(f"{name}: mounts {src}, which does not exist")
        elif src not in (doc.get("volumes") or {}):
            problems.append(f"{name}: named volume {src} is not declared")
    if svc.get("image", "").startswith("tributary"):
        missing = env_vars - set((svc.get("environment") or {}).keys())
        if missing:
            problems.append(f"{name}: lacks {sorted(missing)} (stack/env.sh)")
        build = svc.get("build") or {}
        if not os.path.exists(os.path.join(base, build.get("context", "."), build.get("dockerfile", "Dockerfile"))):
            problems.append(f"{name}: its Dockerfile does not exist")

# Every Tributary process is scraped on the port its command serves /metrics on.
prom = yaml.safe_load(open(prom_path))
targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
for name, svc in services.items():
    if not svc.get("image", "").startswith("tributary") or svc.get("restart") == "no":
        continue
    cmd = svc.get("command") or []
    port = None
    for flag in ("--metrics-listen", "--listen"):
        if flag in cmd:
            port = cmd[cmd.index(flag) + 1].rsplit(":", 1)[1]
            break
    if port is None:
        problems.append(f"{name}: its command names no --metrics-listen/--listen address")
    elif f"{name}:{port}" not in targets:
        problems.append(f"{name}: prometheus does not scrape {name}:{port}")
for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
EOF
}
if python3 -c 'import yaml' 2>/dev/null; then
  check "compose.yml: every service present, healthchecked, its mounts and dependencies exist, scraped" shape
else
  skip "python3 has no yaml module: compose.yml's shape not checked"
fi

# 3. Prometheus's own validation of its config.
if command -v promtool >/dev/null; then
  check "promtool check config accepts compose/prometheus/prometheus.yml" \
    bash -c "promtool check config '$prom_config' >/dev/null"
else
  skip "promtool not installed (stack/stack.sh up installs it)"
fi

# 4. The dashboard.
check "the Grafana dashboard is valid JSON" bash -c "python3 -m json.tool '$dashboard' >/dev/null"
ds_uid=$(sed -n 's/^ *uid: *//p' "$datasource" | head -n1)
uids_ok() {
  python3 - "$dashboard" "$ds_uid" <<'EOF'
import json, sys
dash, uid = json.load(open(sys.argv[1])), sys.argv[2]
bad = [p["title"] for p in dash["panels"] if p["type"] != "row"
       and (p.get("datasource", {}).get("uid") != uid or not p.get("targets"))]
for t in bad:
    print(f"  panel {t!r}: no query or not on datasource {uid}")
sys.exit(1 if bad else 0)
EOF
}
check "every dashboard panel queries the provisioned datasource (uid $ds_uid)" uids_ok
registered() { # every tributary_* metric the dashboard queries is a name registered in the code
  local missing=0 name base
  for name in $(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("\n".join(t["expr"] for p in d["panels"] for t in p.get("targets", [])))' "$dashboard" |
    grep -o 'tributary_[a-z_]*' | sort -u); do
    base=${name%_bucket}; base=${base%_count}; base=${base%_sum}
    if ! grep -rqF "\"$base\"" "$root"/processors/*/src "$root"/sinks/src "$root"/producers/src "$root"/runtime/src; then
      echo "  $name: not registered anywhere in the code"; missing=1
    fi
  done
  return $missing
}
check "every metric the dashboard queries is registered in the code" registered

echo "compose: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
