"""pgBackRest's repository in a bucket (its repo1-* options) and the certificate of the embedded store's HTTPS port
that such a repository needs: pgBackRest 2.45 speaks only HTTPS to S3, while the app and the logical backups keep
the store's plain port. Both runtimes use this: the local one serves HTTPS on ``ports.s3_tls`` of the host, the
docker one on ``S3_TLS_PORT`` of the s3 container, reached by its name ``s3`` on the project network."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import ConfigError
from aixsss_ops.fsutil import atomic_write

NETWORK_NAME = "s3"  # the store's name on the docker runtime's network (a name the certificate carries)


def embedded_tls(cfg: OpsConfig) -> bool:
    """The embedded store serves HTTPS too: pgBackRest's repository is a bucket of it (``backup.pitr``,
    ``destination = "s3"``, no ``backup.s3_endpoint``)."""
    b = cfg.backup
    return bool(b.pitr and b.destination == "s3" and not b.s3_endpoint and "s3" not in cfg.external)


def tls_files(layout: Layout) -> dict[str, Path]:
    tls = layout.s3_dir / "tls"
    return {"cert": tls / "cert.pem", "key": tls / "key.pem", "ca": tls / "ca.pem"}


def ensure_tls(cfg: OpsConfig, layout: Layout, network: bool = False) -> dict[str, Path]:
    """The HTTPS port's certificate: a CA made here (its key never written: nothing else can be signed with it), the
    server certificate it signs for ``host`` (as an IP address and a DNS name: pgBackRest 2.45 matches the host
    against DNS names and the common name only) and for ``s3``. Made again when missing, within 30 days of its end,
    or when it does not name ``host`` (and ``s3``, with ``network``: the docker runtime's). The store serves a new
    one from its next start (the docker runtime recreates its container: the files are part of its spec)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = tls_files(layout)
    now = dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        fresh = (cert.not_valid_after_utc - now > dt.timedelta(days=30) and files["key"].exists()
                 and files["ca"].exists()
                 and {cfg.host, *([NETWORK_NAME] if network else [])} <= set(names.get_values_for_type(x509.DNSName)))
    except (OSError, ValueError, x509.ExtensionNotFound):
        fresh = False
    if fresh:
        return files
    files["cert"].parent.mkdir(parents=True, exist_ok=True)
    os.chmod(files["cert"].parent, 0o700)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"aixsss-ops {cfg.project} S3 CA")])
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=825)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys((cfg.host, "localhost", NETWORK_NAME))]
    with contextlib.suppress(ValueError):  # a host name, not an address
        alt.append(x509.IPAddress(ipaddress.ip_address(cfg.host)))
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cfg.host)]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.SubjectAlternativeName(alt), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    atomic_write(files["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    atomic_write(files["cert"], server.public_bytes(pem), mode=0o600)
    atomic_write(files["ca"], ca.public_bytes(pem), mode=0o600)
    return files


def s3_options(cfg: OpsConfig, embedded_endpoint: str, ca_file: str | None) -> dict[str, str]:
    """The repo1-* options of a repository in ``backup.s3_bucket``, path-style, in ``<backup.s3_prefix>.pgbackrest``
    (beside the logical backups, never among them: their catalogue would take the repository for a backup).
    The store is ``backup.s3_endpoint`` (https) or the embedded one at ``embedded_endpoint`` (its HTTPS port when
    ``embedded_tls``), whose CA is ``ca_file``."""
    b = cfg.backup
    endpoint = b.s3_endpoint or embedded_endpoint
    u = urlsplit(endpoint)
    if u.scheme != "https":
        raise ConfigError(f"backup.pitr with destination = \"s3\" needs an https endpoint ({endpoint} is not): "
                          "pgBackRest speaks only HTTPS to S3",
                          hint="set backup.s3_endpoint to an https:// address of the store, or keep the pgBackRest "
                               "repository local (destination = \"local\")")
    same = not b.s3_access_key
    if b.s3_bucket == cfg.s3.bucket and not b.s3_endpoint:
        raise ConfigError(f"backup.s3_bucket = '{b.s3_bucket}' is the app's own bucket: backups must go elsewhere")
    if not b.s3_prefix.strip("/"):
        raise ConfigError("backup.pitr with destination = \"s3\" needs backup.s3_prefix: the logical backups own "
                          "the prefix's folders, so pgBackRest's repository goes beside it (<s3_prefix>.pgbackrest)")
    repo = {"repo1-type": "s3", "repo1-path": "/" + b.s3_prefix.strip("/") + ".pgbackrest",
            "repo1-s3-bucket": b.s3_bucket, "repo1-s3-endpoint": u.hostname or "",
            "repo1-storage-port": str(u.port or 443), "repo1-s3-uri-style": "path", "repo1-s3-region": cfg.s3.region,
            "repo1-s3-key": cfg.s3.access_key if same else b.s3_access_key,
            "repo1-s3-key-secret": (cfg.s3.secret_key if same else b.s3_secret_key).get_secret_value()}
    if ca_file and not b.s3_endpoint:
        repo["repo1-storage-ca-file"] = ca_file
    return repo
