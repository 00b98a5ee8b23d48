"""Cross-object checks of a built kustomize overlay that schema validation cannot
make: selectors select the pods they mean, named ports exist, probes hit the
gRPC health service on the right port with a service driftd reports, every
DRIFTD_* variable is a real setting, the metrics annotations match the port,
the termination grace outlasts the drain, requests and limits are set, pods
run as non-root with a read-only root, the security settings hold (an address
beyond loopback has API keys or TLS, whose files are whole-directory Secret
mounts so rotation applies; probes use the plaintext health port beside TLS),
and each mode keeps its invariants (embedded: exactly one replica on a volume;
server: N replicas, a Chroma URL that resolves to a Service of the overlay, a
Chroma token from a Secret, a NetworkPolicy letting only driftd pods reach
Chroma, and under TLS peers that can verify each other: a CA and a server name
that is one of the overlay's Services, since peers dial pod IPs).

Usage: python ci/deploy_lint.py MODE BUILT.yaml   (MODE: embedded | server)
Exit status 1 with one line per finding.
"""

from __future__ import annotations

import sys
from urllib.parse import urlparse

import yaml

from driftd.config import Settings
from driftd.server.app import SERVICE_NAMES

SETTINGS = {"DRIFTD_" + name.upper() for name in Settings.__dataclass_fields__}
HEALTH_SERVICES = {"", *SERVICE_NAMES}
WORKLOADS = ("Deployment", "StatefulSet")


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def lint(mode: str, docs: list[dict]) -> list[str]:
    out: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    services = by_kind.get("Service", [])
    workloads = [w for k in WORKLOADS for w in by_kind.get(k, [])]

    def name(o: dict) -> str:
        return f"{o['kind']}/{o['metadata']['name']}"

    def pod_ports(w: dict) -> dict[str, int]:
        return {
            p["name"]: p["containerPort"]
            for c in w["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }

    # Workload selectors match their own templates.
    for w in workloads:
        if not selects(w["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]):
            out.append(f"{name(w)}: selector does not match its pod template")

    # Services select pods that have the ports they target.
    for s in services:
        sel = s["spec"].get("selector", {})
        targets = [
            w for w in workloads if selects(sel, w["spec"]["template"]["metadata"]["labels"])
        ]
        if not targets:
            out.append(f"{name(s)}: selector {sel} selects no pods")
        for w in targets:
            for p in s["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if isinstance(tp, str) and tp not in pod_ports(w):
                    out.append(f"{name(s)}: targetPort {tp!r} is not a port of {name(w)}")
        if len({name(w) for w in targets}) > 1:
            out.append(f"{name(s)}: selects pods of several workloads {[name(w) for w in targets]}")

    # Every workload is covered by exactly one PodDisruptionBudget.
    for w in workloads:
        pdbs = [
            p
            for p in by_kind.get("PodDisruptionBudget", [])
            if selects(p["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        if len(pdbs) != 1:
            out.append(f"{name(w)}: covered by {len(pdbs)} PodDisruptionBudgets, want 1")

    # ServiceMonitors select a Service with the port they scrape.
    for sm in by_kind.get("ServiceMonitor", []):
        chosen = [s for s in services if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
        if not chosen:
            out.append(f"{name(sm)}: selects no Service")
        for ep in sm["spec"]["endpoints"]:
            if not any(ep["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in chosen):
                out.append(f"{name(sm)}: no selected Service has a port named {ep['port']!r}")

    driftd_pods = []
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        if not pod.get("runAsNonRoot"):
            out.append(f"{name(w)}: pod securityContext.runAsNonRoot is not true")
        if spec.get("automountServiceAccountToken") is not False:
            out.append(f"{name(w)}: mounts a service account token it does not need")
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name(w)} container {c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        out.append(f"{where}: no {part}.{r}")
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
                out.append(f"{where}: want readOnlyRootFilesystem and no privilege escalation")
            if c.get("image") != spec["containers"][0]["image"]:
                out.append(f"{where}: image {c.get('image')} differs from the pod's main image")
        for c in spec["containers"]:
            if c["name"] == "driftd":
                driftd_pods.append((w, c))

    if len(driftd_pods) != 1:
        out.append(f"want exactly one workload running driftd, found {len(driftd_pods)}")
        return out
    w, c = driftd_pods[0]
    where = f"{name(w)} container driftd"
    env = {}
    for src in c.get("envFrom", []):
        cm = src.get("configMapRef", {}).get("name")
        if cm not in configmaps:
            out.append(f"{where}: envFrom ConfigMap {cm!r} is not in the overlay")
        env.update(configmaps.get(cm, {}))
    env.update({e["name"]: e.get("value", "") for e in c.get("env", [])})
    from_secrets = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    for key in sorted(env):
        if key.startswith("DRIFTD_") and key not in SETTINGS:
            out.append(f"{where}: {key} is not a driftd setting (see driftd/config.py)")
    ports = pod_ports(w)
    grpc_port = int(env.get("DRIFTD_ADDRESS", "127.0.0.1:50051").rpartition(":")[2])
    if not env.get("DRIFTD_ADDRESS", "").startswith(("0.0.0.0:", "[::]:")):
        out.append(f"{where}: DRIFTD_ADDRESS must listen on all interfaces for probes and Services")
    if ports.get("grpc") != grpc_port:
        out.append(f"{where}: port 'grpc' {ports.get('grpc')} != DRIFTD_ADDRESS port {grpc_port}")
    metrics_port = int(env.get("DRIFTD_METRICS_PORT", 9464))
    if ports.get("metrics") != metrics_port:
        out.append(f"{where}: port 'metrics' {ports.get('metrics')} != {metrics_port}")
    ann = w["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(
        metrics_port
    ):
        out.append(f"{name(w)}: prometheus.io/scrape and prometheus.io/port={metrics_port} wanted")
    out += _security(where, w, c, env)
    probe_port = grpc_port
    if env.get("DRIFTD_HEALTH_ADDRESS"):
        probe_port = int(env["DRIFTD_HEALTH_ADDRESS"].rpartition(":")[2])
        if ports.get("health") != probe_port:
            out.append(f"{where}: port 'health' {ports.get('health')} != {probe_port}")
    elif env.get("DRIFTD_TLS_CERT_FILE"):
        out.append(f"{where}: TLS on the gRPC port needs DRIFTD_HEALTH_ADDRESS for kubelet probes")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        g = c.get(probe, {}).get("grpc")
        if g is None:
            out.append(f"{where}: {probe} is not a gRPC health probe")
            continue
        if g.get("port") != probe_port:
            out.append(f"{where}: {probe} port {g.get('port')} != {probe_port}")
        if g.get("service", "") not in HEALTH_SERVICES:
            out.append(f"{where}: {probe} service {g.get('service')!r} is not one driftd reports")
    grace = float(env.get("DRIFTD_GRACE_SECONDS", 10))
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(pre[1]) if pre[:1] == ["sleep"] else 0.0
    tgps = w["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if tgps <= grace + pause:
        out.append(f"{name(w)}: terminationGracePeriodSeconds {tgps} <= drain {grace} + {pause}")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    if "/tmp" not in mounts:
        out.append(f"{where}: no writable /tmp (the root filesystem is read-only)")

    if mode == "embedded":
        if w["kind"] != "StatefulSet" or w["spec"].get("replicas") != 1:
            out.append(f"{name(w)}: embedded Chroma has one writer: want a 1-replica StatefulSet")
        for key in ("DRIFTD_CHROMA_URL", "DRIFTD_PEERS"):
            if key in env:
                out.append(f"{where}: embedded mode must not set {key}")
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        path = env.get("DRIFTD_CHROMA_PATH", "./driftd_data")
        on_claim = [
            m
            for m in c.get("volumeMounts", [])
            if m["name"] in claims and path.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        if not on_claim:
            out.append(f"{where}: DRIFTD_CHROMA_PATH {path} is not on a PersistentVolumeClaim")
    elif mode == "server":
        if w["kind"] != "Deployment" or w["spec"].get("replicas", 1) < 2:
            out.append(f"{name(w)}: server mode wants a Deployment of several replicas")
        url = urlparse(env.get("DRIFTD_CHROMA_URL", ""))
        if not url.hostname:
            out.append(f"{where}: server mode needs DRIFTD_CHROMA_URL")
        else:
            svc = [s for s in services if s["metadata"]["name"] == url.hostname.split(".")[0]]
            if not svc or url.port not in {p["port"] for p in svc[0]["spec"]["ports"]}:
                out.append(f"{where}: DRIFTD_CHROMA_URL {url.geturl()} is no Service port here")
        # Ownership: every ready replica from a headless Service, each one
        # advertising its pod IP (what that Service resolves to).
        peer_host, _, peer_port = env.get("DRIFTD_PEERS", "").rpartition(":")
        headless = [
            s
            for s in services
            if s["metadata"]["name"] == peer_host.split(".")[0]
            and s["spec"].get("clusterIP") == "None"
        ]
        if not headless or int(peer_port or 0) not in {
            p["port"] for p in headless[0]["spec"]["ports"]
        }:
            out.append(f"{where}: DRIFTD_PEERS must name a headless Service's gRPC port")
        pod_ip = [
            e
            for e in c.get("env", [])
            if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP"
        ]
        advertise = f"$({pod_ip[0]['name']}):{grpc_port}" if pod_ip else None
        if env.get("DRIFTD_ADVERTISE_ADDRESS") != advertise:
            out.append(f"{where}: DRIFTD_ADVERTISE_ADDRESS must be the pod IP and gRPC port")
        # Peers are called over TLS when the port uses it: without a CA driftd
        # refuses to start; without a Service's name no pod-IP peer verifies.
        if env.get("DRIFTD_TLS_CERT_FILE"):
            if not (env.get("DRIFTD_PEER_TLS_CA_FILE") or env.get("DRIFTD_TLS_CLIENT_CA_FILE")):
                out.append(f"{where}: TLS with peers needs DRIFTD_PEER_TLS_CA_FILE to verify them")
            server_name = env.get("DRIFTD_PEER_TLS_SERVER_NAME", "")
            if server_name.split(".")[0] not in {s["metadata"]["name"] for s in services}:
                out.append(
                    f"{where}: DRIFTD_PEER_TLS_SERVER_NAME {server_name!r} must name a Service "
                    "(peers dial pod IPs, which certificates do not name)"
                )
        chroma = [x for x in by_kind.get("StatefulSet", []) if "chroma" in x["metadata"]["name"]]
        if len(chroma) != 1 or not chroma[0]["spec"].get("volumeClaimTemplates"):
            out.append("server mode wants one Chroma StatefulSet with a volume claim")
        if "DRIFTD_CHROMA_TOKEN" not in from_secrets:
            out.append(f"{where}: server mode wants DRIFTD_CHROMA_TOKEN from a Secret")
        if chroma and not _only_driftd_reaches(chroma[0], w, by_kind.get("NetworkPolicy", [])):
            out.append(
                "server mode wants a NetworkPolicy letting only driftd pods reach Chroma's pods"
            )
    else:
        out.append(f"unknown mode {mode!r}")
    return out


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _security(where: str, w: dict, c: dict, env: dict) -> list[str]:
    """An exposed address has API keys or TLS (or says --insecure), and every
    file setting lives on a whole-directory Secret mount (subPath mounts never
    see a rotated Secret)."""
    out = []
    guarded = env.get("DRIFTD_API_KEYS_FILE") or env.get("DRIFTD_TLS_CERT_FILE")
    insecure = env.get("DRIFTD_INSECURE", "").lower() in ("1", "true", "yes", "on")
    if not _is_loopback(env.get("DRIFTD_ADDRESS", "127.0.0.1:50051")) and not guarded:
        if not insecure:
            out.append(f"{where}: a non-loopback DRIFTD_ADDRESS needs API keys or TLS")
    volumes = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes", [])}
    for key in (
        "DRIFTD_API_KEYS_FILE",
        "DRIFTD_TLS_CERT_FILE",
        "DRIFTD_TLS_KEY_FILE",
        "DRIFTD_TLS_CLIENT_CA_FILE",
        "DRIFTD_PEER_TLS_CA_FILE",
    ):
        path = env.get(key)
        if not path:
            continue
        mounts = [
            m
            for m in c.get("volumeMounts", [])
            if path.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        if not mounts or "secret" not in volumes.get(mounts[0]["name"], {}):
            out.append(f"{where}: {key} {path} is not on a Secret volume")
        elif "subPath" in mounts[0]:
            out.append(f"{where}: {key} is a subPath mount, which never sees a rotation")
    return out


def _only_driftd_reaches(chroma: dict, driftd: dict, policies: list[dict]) -> bool:
    """A NetworkPolicy selects Chroma's pods for ingress and admits only pods
    that driftd's template labels match."""
    chroma_labels = chroma["spec"]["template"]["metadata"]["labels"]
    driftd_labels = driftd["spec"]["template"]["metadata"]["labels"]
    for p in policies:
        spec = p["spec"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        if not selects(spec.get("podSelector", {}), chroma_labels):
            continue
        sources = [src for rule in spec.get("ingress", []) for src in rule.get("from", [])]
        if sources and all(
            set(src) == {"podSelector"}
            and selects(src["podSelector"], driftd_labels)
            and not selects(src["podSelector"], chroma_labels)
            for src in sources
        ):
            return True
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    mode, path = argv
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    findings = lint(mode, docs)
    for line in findings:
        print(f"{path}: {line}")
    kinds = sorted({d["kind"] for d in docs})
    print(f"{path}: {len(docs)} objects ({', '.join(kinds)}), {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
