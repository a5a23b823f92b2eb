"""Start-up: the service's environment per the contract, or one line on stderr and exit 1."""

from __future__ import annotations

import os
import sys

from aixsss_ops.contracts.env import EnvInvalid, load_service_env


def load_env_or_exit(service: str):
    try:
        return load_service_env(service, os.environ, bundled=True)
    except EnvInvalid as e:
        print(f"{service}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
