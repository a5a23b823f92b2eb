"""Provider-key encryption key: check, generate, rotate (``aixsss-ops keys``).

``engine`` scans and re-encrypts the ``"AIProfile"`` secrets (parallel crypto, batched transactions with row
locks); ``rotate`` orders the steps (check, pause, re-encrypt, verify, env files, restart, sweep, resume) and keeps
the progress file; ``keyring`` finds keys (configured, previous, pending) and tells whose a value is.
"""
