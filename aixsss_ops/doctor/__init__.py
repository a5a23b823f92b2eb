"""``aixsss-ops doctor``: checks, each a small function returning findings; the runner runs them in parallel."""
