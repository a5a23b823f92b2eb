"""Backup and restore: Postgres dumps and S3 object versions as one restore point (see the README)."""
