#!/usr/bin/env python3
"""Render every overlay, validate it against the Kubernetes schemas, and check every tidecast
configuration a manifest gives the binary with `tidecast --check-config`.

    check.py TIDECAST_BINARY

Needs `kubectl` (for `kubectl kustomize`) and `kubernetes-validate` (PyPI, with PyYAML) — both
installed by `infra/bootstrap.sh --test`. Exits non-zero naming the overlay, the workload and
the offending key, so manifests and binary cannot drift apart.
"""

import base64
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
OVERLAYS = ["eu", "us", "ap", "origin"]
KUBERNETES = "1.30.0"
# what the downward API gives a pod, for $(VAR) references in env values
DOWNWARD = {"status.hostIP": "10.0.0.7", "status.podIP": "10.1.0.7"}


def fail(message):
    sys.exit(f"infra/k8s: {message}")


def render(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", os.path.join(HERE, "overlays", overlay)],
        capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"kubectl kustomize overlays/{overlay}: {out.stderr.strip()}")
    return out.stdout


def validate(overlay, text, validator):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run([validator, "--strict", "-k", KUBERNETES, "--quiet", f.name],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        fail(f"overlays/{overlay} does not validate against Kubernetes {KUBERNETES}:\n"
             f"{out.stdout}{out.stderr}")


def container_env(container, secrets):
    env = {}
    for ref in container.get("envFrom", []):
        name = ref.get("secretRef", {}).get("name")
        if name is not None:
            if name not in secrets:
                fail(f"container {container['name']}: no Secret {name}")
            env.update(secrets[name])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[var["name"]] = DOWNWARD.get(field, "x")
    # Kubernetes expands $(VAR) from variables defined before it
    return {k: re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), v)
            for k, v in env.items()}


def check_workloads(overlay, docs, binary):
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in docs if d["kind"] == "Secret"
    }
    checked = 0
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("containers", []):
            if not c.get("image", "").startswith("tidecast"):
                continue
            args = list(c.get("args", []))
            with tempfile.TemporaryDirectory() as tmp:
                # the config file the container reads: a ConfigMap volume's files
                for m in c.get("volumeMounts", []):
                    cm = volumes.get(m["name"], {}).get("configMap")
                    if cm is None:
                        continue
                    if cm["name"] not in configmaps:
                        fail(f"{d['metadata']['name']}: no ConfigMap {cm['name']}")
                    for file, text in configmaps[cm["name"]].items():
                        local = os.path.join(tmp, file)
                        with open(local, "w") as f:
                            f.write(text)
                        args = [os.path.join(tmp, file) if a == os.path.join(m["mountPath"], file)
                                else a for a in args]
                env = {"PATH": os.environ.get("PATH", "")}
                env.update(container_env(c, secrets))
                out = subprocess.run([binary, "--check-config", *args], env=env,
                                     capture_output=True, text=True)
            where = f"overlays/{overlay}: {d['kind']} {d['metadata']['name']}, container {c['name']}"
            if out.returncode != 0:
                fail(f"{where}: tidecast {' '.join(c.get('args', []))} --check-config:\n"
                     f"{out.stderr.strip()}")
            checked += 1
    return checked


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    venv = os.path.expanduser("~/.cache/tidecast/venv/bin/kubernetes-validate")
    validator = venv if os.path.exists(venv) else "kubernetes-validate"
    for overlay in OVERLAYS:
        text = render(overlay)
        validate(overlay, text, validator)
        docs = [d for d in yaml.safe_load_all(text) if d]
        n = check_workloads(overlay, docs, binary)
        kinds = sorted({d["kind"] for d in docs})
        print(f"overlays/{overlay}: {len(docs)} objects ({', '.join(kinds)}) valid for "
              f"Kubernetes {KUBERNETES}; {n} tidecast configs pass --check-config")


if __name__ == "__main__":
    main()
