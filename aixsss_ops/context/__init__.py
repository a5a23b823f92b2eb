"""What a command knows about the deployment it operates: ops.toml, the flags, the environment, the env files,
the embedded stack's secrets and the deploy state, resolved once (``Deployment``)."""
