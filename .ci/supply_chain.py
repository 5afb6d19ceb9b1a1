#!/usr/bin/env python3
"""Supply-chain and deployment checks run by .ci/run (SR-005, SR-008, SR-009, SR-010).

    python3 .ci/supply_chain.py

Each check prints what it looked at; any failure is listed and the script exits 1.

- SR-009: every `uses:` in .github/ names a full 40-hex commit SHA (catches `@v4`, `@main`,
  `@master` and any other ref), and the literal `grep -rn "@v" .github/` finds nothing.
- Workflows parse as YAML, every job has `runs-on` and `steps`, the workflow sets
  `permissions`, `id-token: write` appears only in a job that signs with cosign, and every
  repository file a workflow names exists.
- SR-008: the release workflow signs by digest with keyless cosign and verifies that digest
  with an expected certificate identity and issuer; SR-010: it generates `sbom.cdx.json` and
  uploads it as a release asset.
- SR-005: the Containerfile's final stage (and the offline stage) run as a numeric non-root
  USER; every base image is scratch or pinned by digest. The Kubernetes manifest passes the
  "restricted" Pod Security Standard; the compose file drops all capabilities, sets
  no-new-privileges, a read-only root and a non-root user.

Needs PyYAML (.ci/run installs it in a virtualenv). SUPPLY_CHAIN_ROOT points the checks at
another tree; .ci/supply_chain_test.py uses it to prove each check fails on a broken copy.
"""

import os
import re
import sys

import yaml

ROOT = os.environ.get("SUPPLY_CHAIN_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def fail(message):
    failures.append(message)


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def files_under(directory):
    for base, _, names in os.walk(os.path.join(ROOT, directory)):
        for name in names:
            yield os.path.relpath(os.path.join(base, name), ROOT)


# --- SR-009: actions pinned to full commit SHAs -------------------------------------------------
USES = re.compile(r"^\s*-?\s*uses:\s*['\"]?([^\s'\"#]+)")
SHA = re.compile(r"^[0-9a-f]{40}$")


def check_pins():
    count = 0
    for path in files_under(".github"):
        for number, line in enumerate(read(path).splitlines(), 1):
            if "@v" in line:
                fail(f'{path}:{number}: contains "@v" (SR-009 grep): {line.strip()}')
            match = USES.match(line)
            if not match:
                continue
            count += 1
            target = match.group(1)
            if target.startswith("./"):
                continue  # a local action is part of this repository
            if target.startswith("docker://"):
                if "@sha256:" not in target:
                    fail(f"{path}:{number}: container action not pinned by digest: {target}")
                continue
            _, _, ref = target.partition("@")
            if not SHA.match(ref):
                fail(f"{path}:{number}: {target} is not pinned to a 40-hex commit SHA")
    print(f"pins: {count} `uses:` checked")


# --- Workflows ----------------------------------------------------------------------------------
REPO_PATH = re.compile(r"(?<![\w/.-])((?:\.ci|deploy|benches|fuzz|scripts|crates)/[\w./-]+|Containerfile)")


def check_workflows():
    workflows = [p for p in files_under(".github/workflows") if p.endswith((".yml", ".yaml"))]
    if not workflows:
        fail(".github/workflows has no workflow")
    for path in workflows:
        try:
            doc = yaml.safe_load(read(path))
        except yaml.YAMLError as error:
            fail(f"{path}: not valid YAML: {error}")
            continue
        # YAML 1.1 reads the key `on` as True.
        if not isinstance(doc, dict) or "jobs" not in doc or not ({"on", True} & set(doc)):
            fail(f"{path}: not a workflow (needs `on` and `jobs`)")
            continue
        if "permissions" not in doc:
            fail(f"{path}: no top-level `permissions` (default token scopes are too broad)")
        for name, job in doc["jobs"].items():
            if "runs-on" not in job or not job.get("steps"):
                fail(f"{path}: job {name} needs `runs-on` and `steps`")
                continue
            scripts = " ".join(str(step.get("run", "")) for step in job["steps"])
            id_token = (job.get("permissions") or {}).get("id-token")
            if id_token == "write" and "cosign sign" not in scripts:
                fail(f"{path}: job {name} has `id-token: write` but signs nothing")
            for step in job["steps"]:
                texts = [str(step.get("run", ""))]
                texts += [str(v) for k, v in (step.get("with") or {}).items() if k in ("file", "path", "context")]
                for text in texts:
                    for referenced in REPO_PATH.findall(text):
                        if not os.path.exists(os.path.join(ROOT, referenced)):
                            fail(f"{path}: job {name} names {referenced}, which does not exist")
        print(f"workflow: {path}: {len(doc['jobs'])} jobs parsed")


def check_release():
    path = ".github/workflows/release.yml"
    if not os.path.exists(os.path.join(ROOT, path)):
        fail(f"{path} is missing")
        return
    text = read(path)
    for needle, why in [
        ('cosign sign --yes "${IMAGE}@${DIGEST}"', "SR-008: sign the pushed digest"),
        ('cosign verify "${IMAGE}@${DIGEST}"', "SR-008: verify the pushed digest"),
        ("--certificate-identity", "SR-008: verify against the expected identity"),
        ("--certificate-oidc-issuer https://token.actions.githubusercontent.com", "SR-008: and issuer"),
        ("deploy/sbom.py --output sbom.cdx.json", "SR-010: generate the SBOM"),
        ("gh release upload \"$TAG\" sbom.cdx.json", "SR-010: attach it to the release"),
    ]:
        if needle not in text:
            fail(f"{path}: missing {needle!r} ({why})")
    print(f"release: {path}: signing, verification and SBOM steps present")


# --- Containerfile ------------------------------------------------------------------------------
def check_containerfile():
    path = "Containerfile"
    args = {}
    stages = []  # (name, base, user)
    for raw in read(path).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif word == "FROM":
            parts = rest.split()
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append([name, base, None])
        elif word == "USER" and stages:
            stages[-1][2] = rest.strip()
    if not stages:
        fail(f"{path}: no stages")
        return
    for name, base, _ in stages:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        if resolved != "scratch" and "@sha256:" not in resolved:
            fail(f"{path}: stage {name or base}: base image {resolved} is not pinned by digest")
    final = stages[-1]
    runtime_stages = [final] + [s for s in stages if s[0] == "runtime-local"]
    for name, _, user in runtime_stages:
        if user is None or not re.fullmatch(r"[0-9]+(:[0-9]+)?", user) or user.split(":")[0] == "0":
            fail(f"{path}: stage {name}: USER must be a numeric non-root uid[:gid], got {user!r}")
    print(f"containerfile: {len(stages)} stages; final stage {final[0]} runs as {final[2]}")


# --- Kubernetes: the "restricted" Pod Security Standard -----------------------------------------
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def check_pod_spec(where, spec):
    security = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            fail(f"{where}: {key} is not allowed")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            fail(f"{where}: volume {volume.get('name')} of type {sorted(kinds)} is not allowed")
    pod_non_root = security.get("runAsNonRoot") is True
    pod_seccomp = (security.get("seccompProfile") or {}).get("type")
    if security.get("runAsUser") == 0:
        fail(f"{where}: pod runAsUser 0")
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if not containers:
        fail(f"{where}: no containers")
    for container in containers:
        name = f"{where}: container {container.get('name')}"
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            fail(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            fail(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{name}: adds capabilities {capabilities.get('add')}")
        if not (context.get("runAsNonRoot") is True or (pod_non_root and context.get("runAsNonRoot") is not False)):
            fail(f"{name}: runAsNonRoot must be true")
        if context.get("runAsUser") == 0:
            fail(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if context.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: readOnlyRootFilesystem must be true (drover's own rule)")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            fail(f"{name}: hostPort is not allowed")


def check_kubernetes():
    path = "deploy/kubernetes/drover.yaml"
    documents = [d for d in yaml.safe_load_all(read(path)) if d]
    pods = 0
    kinds = {d.get("kind") for d in documents}
    for doc in documents:
        kind = doc.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            check_pod_spec(f"{path}: {kind} {doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            pods += 1
        elif kind == "Pod":
            check_pod_spec(f"{path}: Pod {doc['metadata']['name']}", doc["spec"])
            pods += 1
        elif kind == "Namespace":
            labels = doc["metadata"].get("labels") or {}
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                fail(f"{path}: namespace does not enforce the restricted standard")
    if not pods:
        fail(f"{path}: no workload")
    if "PersistentVolumeClaim" not in kinds:
        fail(f"{path}: no PersistentVolumeClaim for the store")
    if "VASTAI_API_KEY" in read(path) and "secretKeyRef" not in read(path):
        fail(f"{path}: VASTAI_API_KEY must come from a Secret")
    print(f"kubernetes: {path}: {pods} workload(s) meet the restricted standard")


def check_compose():
    path = "deploy/compose.yaml"
    doc = yaml.safe_load(read(path))
    for name, service in doc["services"].items():
        where = f"{path}: service {name}"
        if "ALL" not in (service.get("cap_drop") or []):
            fail(f"{where}: cap_drop must include ALL")
        if service.get("cap_add"):
            fail(f"{where}: adds capabilities")
        if not any(str(o).startswith("no-new-privileges") for o in service.get("security_opt") or []):
            fail(f"{where}: needs security_opt no-new-privileges")
        if service.get("read_only") is not True:
            fail(f"{where}: read_only must be true")
        user = str(service.get("user", ""))
        if not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user):
            fail(f"{where}: user must be a numeric non-root uid")
        if service.get("privileged"):
            fail(f"{where}: privileged")
    print(f"compose: {path}: {len(doc['services'])} service(s) locked down")


def main():
    check_pins()
    check_workflows()
    check_release()
    check_containerfile()
    check_kubernetes()
    check_compose()
    if failures:
        print(f"\n{len(failures)} supply-chain check(s) failed:", file=sys.stderr)
        for message in failures:
            print(f"  - {message}", file=sys.stderr)
        sys.exit(1)
    print("supply chain: all checks passed")


if __name__ == "__main__":
    main()
