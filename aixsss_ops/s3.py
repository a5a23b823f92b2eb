"""The S3/MinIO client (the ``minio`` SDK) with short timeouts and one clear error when the store is down."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aixsss_ops.errors import ServiceUnavailable


@dataclass(frozen=True)
class S3Target:
    endpoint: str  # http://host:port
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, timeout: float = 10.0):
        import urllib3
        from minio import Minio

        u = urlsplit(self.endpoint)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 3.0), read=timeout),
            retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        return Minio(
            u.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=u.scheme == "https",
            region=self.region,
            http_client=http,
        )


def ensure_bucket(target: S3Target, bucket: str) -> bool:
    """Create ``bucket`` when missing; True when it was created now."""
    import urllib3
    from minio.error import S3Error

    c = target.client()
    try:
        if c.bucket_exists(bucket):
            return False
        c.make_bucket(bucket)
        return True
    except S3Error as e:
        if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise ServiceUnavailable(f"s3 at {target.endpoint}: {e.code}: {e.message}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise ServiceUnavailable(f"s3 at {target.endpoint} is unreachable: {e}") from None
