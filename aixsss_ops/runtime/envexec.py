"""``python -m aixsss_ops.runtime.envexec [--env-file F] [--set K=V] -- PROGRAM ARGS``.

Execs PROGRAM with the env files' variables, then the ``--set`` overrides (per-color, never secret).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(args: list[str]) -> None:
    from aixsss_ops.envfile import parse

    if "--" not in args:
        sys.exit("usage: envexec [--env-file FILE]... -- PROGRAM [ARGS]")
    sep = args.index("--")
    opts, argv = args[:sep], args[sep + 1 :]
    env = dict(os.environ)
    it = iter(opts)
    for opt in it:
        if opt == "--env-file":
            path = Path(next(it))
            env.update(parse(path.read_text(encoding="utf-8"), str(path)))
        elif opt == "--set":
            key, _, value = next(it).partition("=")
            env[key] = value
        else:
            sys.exit(f"envexec: unknown option {opt}")
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
