#!/usr/bin/env python3
"""Writes one CycloneDX SBOM (JSON, spec 1.5) for the drover workspace and checks that it
lists every crate in Cargo.lock.

    python3 deploy/sbom.py [--output sbom.cdx.json]

cargo-cyclonedx (from crates.io) writes one SBOM per workspace crate, covering the normal and
build dependencies for every target platform. This script merges them into one document (the
`drover` binary crate as the described component) and adds the crates Cargo.lock holds only
for tests and benchmarks (dev-dependencies) as components with `"scope": "excluded"`, which is
what CycloneDX defines that scope for. It exits non-zero if any crate of Cargo.lock is missing
from the result, so CI can rely on it. Standard library only.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tomllib

PER_CRATE_NAME = "drover-sbom.cdx"


def purl(name, version):
    return f"pkg:cargo/{name}@{version}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="sbom.cdx.json")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)

    subprocess.run(
        ["cargo", "cyclonedx", "--format", "json", "--spec-version", "1.5", "--target", "all",
         "--all", "--override-filename", PER_CRATE_NAME, "-q"],
        check=True,
    )
    per_crate = sorted(glob.glob(f"crates/*/{PER_CRATE_NAME}.json"))
    if not per_crate:
        sys.exit("sbom.py: cargo cyclonedx wrote no SBOM")

    components = {}
    dependencies = {}
    metadata = None
    for path in per_crate:
        with open(path) as f:
            doc = json.load(f)
        os.remove(path)
        described = doc["metadata"]["component"]
        if described["name"] == "drover":
            metadata = doc["metadata"]
        else:
            components.setdefault(described["bom-ref"], {k: v for k, v in described.items() if k != "components"})
        for component in doc.get("components", []):
            components.setdefault(component["bom-ref"], component)
        for dep in doc.get("dependencies", []):
            dependencies.setdefault(dep["ref"], set()).update(dep.get("dependsOn", []))
    if metadata is None:
        sys.exit("sbom.py: no SBOM for the drover binary crate")

    with open("Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    listed = {(c["name"], c.get("version")) for c in components.values()}
    listed.add((metadata["component"]["name"], metadata["component"]["version"]))
    dev_only = 0
    for package in lock["package"]:
        key = (package["name"], package["version"])
        if key in listed:
            continue
        dev_only += 1
        ref = purl(*key)
        components[ref] = {
            "type": "library",
            "bom-ref": ref,
            "name": package["name"],
            "version": package["version"],
            "scope": "excluded",
            "purl": ref,
            "properties": [{"name": "cdx:cargo:dependency_kind", "value": "dev"}],
        }
        listed.add(key)

    missing = {(p["name"], p["version"]) for p in lock["package"]} - listed
    if missing:
        sys.exit(f"sbom.py: {len(missing)} crates of Cargo.lock are not in the SBOM: {sorted(missing)}")

    sbom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": metadata,
        "components": sorted(components.values(), key=lambda c: (c["name"], c.get("version", ""))),
        "dependencies": [
            {"ref": ref, "dependsOn": sorted(deps)} for ref, deps in sorted(dependencies.items())
        ],
    }
    with open(args.output, "w") as f:
        json.dump(sbom, f, indent=2)
        f.write("\n")
    print(
        f"sbom.py: {args.output}: {len(lock['package'])} crates of Cargo.lock listed "
        f"({len(lock['package']) - dev_only} shipped or built, {dev_only} test-only, scope excluded)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
