"""A factory's SuperNode process only relays messages and checks app bundles against the factory's policy: it
never imports torch or pandas (each adds seconds of start-up and hundreds of MB to every factory's node; the
ClientApp's processes import them)."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
from fedmeta.client.node.supernode import app_refusal
from fedmeta.client.rounds.policy import load_policy
policy = load_policy(sys.argv[1])
print(json.dumps({"refusal": app_refusal(b"not a bundle", {"policy": sys.argv[1]}), "version": policy.app_version,
                  "heavy": sorted(name for name in ("torch", "pandas") if name in sys.modules)}))
"""


def test_the_supernode_reads_a_policy_and_checks_a_bundle_without_torch_or_pandas(tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"app_version": "0.1.0", "algorithms": ["fomaml"], "max_epsilon": 5.0}))
    completed = subprocess.run([sys.executable, "-c", CHECK, str(policy)], capture_output=True, text=True, timeout=60,
                               check=True)
    outcome = json.loads(completed.stdout)
    assert outcome["version"] == "0.1.0" and outcome["refusal"], outcome  # the check ran, and refused the bytes
    assert outcome["heavy"] == [], outcome

