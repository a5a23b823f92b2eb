"""Where the embedded stack keeps everything, under the state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def supervisor(self) -> Path:
        return self.root / "supervisor"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pg_data(self) -> Path:
        return self.root / "postgres" / "data"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def s3_dir(self) -> Path:
        return self.root / "s3"

    @property
    def s3_identities(self) -> Path:
        return self.root / "s3" / "identities.json"

    @property
    def nginx_dir(self) -> Path:
        return self.root / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.root / "nginx" / "nginx.conf"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def api_socket(self, color: str) -> Path:
        return self.run_dir / f"api-{color}.sock"

    @property
    def env_dir(self) -> Path:
        return self.root / "env"

    def env_file(self, service: str) -> Path:
        return self.env_dir / f"{service}.env"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets" / "stack.json"

    @property
    def deploy_dir(self) -> Path:
        return self.root / "deploy"

    @property
    def releases(self) -> Path:
        return self.root / "releases"
