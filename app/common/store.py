"""The S3-compatible object store (MinIO in the real stack) through the ``minio`` client."""

from __future__ import annotations

from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error


def object_store(env) -> Minio:
    endpoint = urlsplit(env.S3_ENDPOINT)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3, read=30),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        endpoint.netloc, access_key=env.S3_ACCESS_KEY, secret_key=env.S3_SECRET_KEY.get_secret_value(),
        secure=endpoint.scheme == "https", region=env.S3_REGION, http_client=http,
    )


def ensure_bucket(client: Minio, bucket: str) -> None:
    if client.bucket_exists(bucket):
        return
    try:
        client.make_bucket(bucket)
    except S3Error as e:
        if e.code != "BucketAlreadyOwnedByYou":  # lost a creation race with the other service
            raise
