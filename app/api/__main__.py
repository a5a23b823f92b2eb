import signal
import sys
from pathlib import Path

import uvicorn

from aixsss_ops.errors import OpsError
from api.app import create_app
from common.settings import load_env_or_exit


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


def main() -> None:
    env = load_env_or_exit("api")
    try:
        app = create_app(env)
    except OpsError as e:
        print(f"api: {e.message}", file=sys.stderr)
        raise SystemExit(1) from None
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal to the handler it found
    # installed; this one turns that into exit status 0 instead of death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    config = uvicorn.Config(
        app, host=env.HOST, port=env.PORT, timeout_graceful_shutdown=10, access_log=False,
    )
    sockets = [config.bind_socket()]
    if env.API_SOCKET:
        config.uds = env.API_SOCKET
        Path(env.API_SOCKET).unlink(missing_ok=True)
        sockets.append(config.bind_socket())  # made 0666 by uvicorn, for the proxy's unprivileged workers
    uvicorn.Server(config).run(sockets=sockets)


main()
