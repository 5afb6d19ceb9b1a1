#!/usr/bin/env python3
"""Proves that every check in .ci/supply_chain.py can fail: each test copies the checked files
into a temporary tree, breaks one thing, and expects the checker to exit 1 naming it.

    python3 .ci/supply_chain_test.py
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(ROOT, ".ci", "supply_chain.py")
CHECKED = [".github", "Containerfile", "deploy", ".ci"]


class BrokenCopies(unittest.TestCase):
    def setUp(self):
        self.tree = tempfile.mkdtemp()
        self.copy_tree()

    def copy_tree(self):
        """A fresh, unbroken copy (each subtest starts from one)."""
        shutil.rmtree(self.tree)
        os.mkdir(self.tree)
        for item in CHECKED:
            source = os.path.join(ROOT, item)
            target = os.path.join(self.tree, item)
            if os.path.isdir(source):
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)

    def tearDown(self):
        shutil.rmtree(self.tree)

    def run_checker(self):
        env = dict(os.environ, SUPPLY_CHAIN_ROOT=self.tree)
        return subprocess.run([sys.executable, CHECKER], env=env, capture_output=True, text=True)

    def edit(self, path, old, new):
        full = os.path.join(self.tree, path)
        with open(full) as f:
            text = f.read()
        self.assertIn(old, text, f"{path} no longer contains {old!r}; update this test")
        with open(full, "w") as f:
            f.write(text.replace(old, new, 1))

    def assert_fails_with(self, needle):
        result = self.run_checker()
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(needle, result.stderr)

    def test_the_untouched_copy_passes(self):
        result = self.run_checker()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_tag_refs_are_caught(self):
        for ref in ["v4", "main", "master", "3d3c42e5aac5", "v7.0.1"]:
            with self.subTest(ref=ref):
                self.copy_tree()
                self.edit(".github/workflows/ci.yml", "@3d3c42e5aac5ba805825da76410c181273ba90b1", f"@{ref}")
                self.assert_fails_with("not pinned to a 40-hex commit SHA")

    def test_unpinned_container_action_is_caught(self):
        self.edit(".github/workflows/ci.yml", "      - name: .ci/run (as root)\n",
                  "      - uses: docker://alpine:3\n      - name: .ci/run (as root)\n")
        self.assert_fails_with("container action not pinned by digest")

    def test_invalid_yaml_is_caught(self):
        self.edit(".github/workflows/ci.yml", "jobs:", "jobs: [")
        self.assert_fails_with("not valid YAML")

    def test_a_missing_referenced_file_is_caught(self):
        os.remove(os.path.join(self.tree, "deploy", "sbom.py"))
        self.assert_fails_with("names deploy/sbom.py, which does not exist")

    def test_id_token_outside_signing_is_caught(self):
        self.edit(".github/workflows/release.yml", "      contents: write # upload the release asset",
                  "      contents: write # upload the release asset\n      id-token: write")
        self.assert_fails_with("has `id-token: write` but signs nothing")

    def test_unsigned_release_is_caught(self):
        self.edit(".github/workflows/release.yml", 'cosign sign --yes "${IMAGE}@${DIGEST}"', "true")
        self.assert_fails_with("SR-008: sign the pushed digest")

    def test_root_or_named_user_in_the_final_stage_is_caught(self):
        for user in ["0:0", "root", "nonroot"]:
            with self.subTest(user=user):
                self.copy_tree()
                with open(os.path.join(self.tree, "Containerfile")) as f:
                    text = f.read()
                head, _, tail = text.rpartition("USER 65532:65532")
                with open(os.path.join(self.tree, "Containerfile"), "w") as f:
                    f.write(head + f"USER {user}" + tail)
                self.assert_fails_with("USER must be a numeric non-root uid")

    def test_unpinned_base_image_is_caught(self):
        self.edit("Containerfile", "@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082", "")
        self.assert_fails_with("is not pinned by digest")

    def test_privilege_escalation_in_kubernetes_is_caught(self):
        self.edit("deploy/kubernetes/drover.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true")
        self.assert_fails_with("allowPrivilegeEscalation must be false")

    def test_kubernetes_without_drop_all_is_caught(self):
        self.edit("deploy/kubernetes/drover.yaml", 'drop: ["ALL"]', 'drop: ["NET_RAW"]')
        self.assert_fails_with("capabilities must drop ALL")

    def test_kubernetes_host_path_is_caught(self):
        self.edit("deploy/kubernetes/drover.yaml", "          emptyDir:\n            medium: Memory",
                  "          hostPath:\n            path: /tmp")
        self.assert_fails_with("is not allowed")

    def test_compose_without_cap_drop_is_caught(self):
        self.edit("deploy/compose.yaml", 'cap_drop: ["ALL"]', "cap_drop: []")
        self.assert_fails_with("cap_drop must include ALL")


if __name__ == "__main__":
    unittest.main(verbosity=1)
