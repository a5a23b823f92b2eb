"""Provider-key encryption key: check, generate, rotate (``aixsss-ops keys``).

``engine`` runs the scans and re-encryption passes over the ``"AIProfile"`` secrets (batched compare-and-set
transactions on two connections), with the pool workers' per-value crypto in ``pool``, the COPY text format in
``copy_codec``, the id-range readers in ``ranges`` and the result types in ``model``; ``rotate`` orders the steps
(check, pause, re-encrypt, verify, env files, restart, sweep, resume) and keeps the progress file; ``service``
finds the keys (configured, previous, pending) and joins the configuration to the rotation.
"""
