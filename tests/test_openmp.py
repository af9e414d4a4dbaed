"""textvae's OpenMP defaults (textvae/openmp.py): set on import, before torch
loads libgomp; a user's value, the switch and torch-first imports respected."""

import os
import subprocess
import sys

import pytest

PROBE = "import os, sys; {imports}; print(os.environ.get('OMP_WAIT_POLICY', '-'))"


def policy(imports: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "TEXTVAE_OPENMP_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], env=clean | env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("imports, env, expected", [
    ("import textvae", {}, "PASSIVE"),
    ("import textvae.cli", {}, "PASSIVE"),
    ("import textvae", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
    ("import textvae", {"TEXTVAE_OPENMP_DEFAULTS": "0"}, "-"),
    ("import torch; import textvae", {}, "-"),  # too late to matter: left alone
], ids=["import", "command", "user-value", "switched-off", "torch-first"])
def test_wait_policy_default(imports, env, expected):
    assert policy(imports, **env) == expected
