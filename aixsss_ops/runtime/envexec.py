"""``python -m aixsss_ops.runtime.envexec [--env-file F] [--url-host K=HOST:PORT] [--set K=V] [--from-env K] -- PROGRAM``.

Execs PROGRAM with the env files' variables, then the ``--url-host`` rewrites (the host and port of the URL in K
replaced, its credentials, path and parameters kept: how a container reaches a service by its network name while
the env file holds the host's view), then the ``--set`` overrides (per-color, never secret) and the ``--from-env``
ones: K as envexec's own environment has it (a secret-looking per-process setting the docker runtime puts in the
container's environment, never on its command line). Secrets stay in files or the environment: the command line
never holds them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def with_host(url: str, hostport: str) -> str:
    """``url`` with its host and port replaced by ``hostport``; the userinfo, path, query and fragment kept."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, _ = netloc.rpartition("@")
    return f"{scheme}://{userinfo}{at}{hostport}{tail}"


def main(args: list[str]) -> None:
    from aixsss_ops.envfile import parse

    if "--" not in args:
        sys.exit("usage: envexec [--env-file FILE]... [--url-host VAR=HOST:PORT]... [--set VAR=VALUE]... "
                 "[--from-env VAR]... -- PROGRAM")
    sep = args.index("--")
    opts, argv = args[:sep], args[sep + 1 :]
    env = dict(os.environ)
    hosts: list[tuple[str, str]] = []
    sets: list[tuple[str, str]] = []
    own = dict(os.environ)
    it = iter(opts)
    for opt in it:
        if opt == "--env-file":
            path = Path(next(it))
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                sys.exit(f"envexec: cannot read {path}: {e.strerror}")
            env.update(parse(text, str(path)))
        elif opt == "--url-host":
            key, _, value = next(it).partition("=")
            hosts.append((key, value))
        elif opt == "--set":
            key, _, value = next(it).partition("=")
            sets.append((key, value))
        elif opt == "--from-env":
            key = next(it)
            if key in own:
                sets.append((key, own[key]))
        else:
            sys.exit(f"envexec: unknown option {opt}")
    for key, hostport in hosts:
        if env.get(key):
            env[key] = with_host(env[key], hostport)
    env.update(sets)
    if not argv:
        sys.exit("envexec: no program given after --")
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        print(f"cannot run {argv[0]}: not found", file=sys.stderr)
        sys.exit(127)
    except OSError as e:
        print(f"cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        sys.exit(126)


if __name__ == "__main__":
    main(sys.argv[1:])
