"""The SDK-free inspect: which engines it reads, and what it says when the socket does not answer."""

import socket

import pytest

from aixsss_ops.config import load_config
from aixsss_ops.errors import ServiceUnavailable
from aixsss_ops.runtime import docker_peek


def _cfg(tmp_path, host: str):
    p = tmp_path / "ops.toml"
    p.write_text(f'runtime = "docker"\n[docker]\nhost = "{host}"\ntimeout = 2\n')
    return load_config(p)


def test_an_engine_on_tcp_or_ssh_is_left_to_the_sdk(tmp_path):
    for host in ("tcp://10.0.0.11:2376", "ssh://ops@manager1"):
        cfg = _cfg(tmp_path, host)
        assert docker_peek.socket_path(cfg) is None
        with pytest.raises(LookupError):
            docker_peek.inspect(cfg, "p-api-blue")


def test_a_socket_nobody_listens_on_is_the_engine_unreachable(tmp_path):
    path = tmp_path / "docker.sock"
    cfg = _cfg(tmp_path, f"unix://{path}")
    assert docker_peek.socket_path(cfg) == str(path)
    with pytest.raises(ServiceUnavailable) as e:
        docker_peek.inspect(cfg, "p-api-blue")
    assert str(path) in str(e.value)


def test_an_answer_other_than_found_or_not_found_is_left_to_the_sdk(tmp_path):
    """A socket that answers HTTP 500 (a real listener on a real socket, speaking HTTP/1.0 back)."""
    import threading

    path = tmp_path / "engine.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    seen: list[bytes] = []

    def answer():
        conn, _ = srv.accept()
        seen.append(conn.recv(65536))
        conn.sendall(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}")
        conn.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(LookupError):
            docker_peek.inspect(_cfg(tmp_path, f"unix://{path}"), "p-api-blue")
    finally:
        t.join(5)
        srv.close()
    assert seen and seen[0].startswith(b"GET /containers/p-api-blue/json HTTP/1.1")
