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


def _listener(path, reply: bytes | None):
    """A real unix socket that reads one request and answers ``reply`` (None: never answers); what it read."""
    import threading

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    seen: list[bytes] = []
    done = threading.Event()

    def serve():
        conn, _ = srv.accept()
        seen.append(conn.recv(65536))
        if reply is not None:
            conn.sendall(reply)
        done.wait(5)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, seen, done, t


def test_a_start_or_stop_is_sent_and_not_waited_for(tmp_path):
    """The engine answers a stop only once the container stopped (up to its stop timeout): the call returns once
    the request is sent and no answer came within 20 ms."""
    import time

    path = tmp_path / "engine.sock"
    srv, seen, done, t = _listener(path, None)
    try:
        t0 = time.monotonic()
        got = docker_peek.post_unanswered(_cfg(tmp_path, f"unix://{path}"), "p-worker-blue", "stop", {"t": 30})
        took = time.monotonic() - t0
    finally:
        done.set()
        t.join(5)
        srv.close()
    assert got is None and took < 1.0  # the socket's timeout is 2 s: it did not wait for it
    assert seen and seen[0].startswith(b"POST /containers/p-worker-blue/stop?t=30 HTTP/1.1")


def test_a_quick_answer_is_read_and_a_refusal_is_left_to_the_sdk(tmp_path):
    cfg_path = tmp_path / "a.sock"
    srv, _seen, done, t = _listener(cfg_path, b"HTTP/1.0 304 Not Modified\r\n\r\n")
    try:
        assert docker_peek.post_unanswered(_cfg(tmp_path, f"unix://{cfg_path}"), "p-api-blue", "start") == 304
    finally:
        done.set()
        t.join(5)
        srv.close()
    refused = tmp_path / "b.sock"
    body = b'{"message":"port is already allocated"}'
    srv, _seen, done, t = _listener(refused, b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s"
                                    % (len(body), body))
    try:
        with pytest.raises(LookupError, match="500"):
            docker_peek.post_unanswered(_cfg(tmp_path, f"unix://{refused}"), "p-api-blue", "start")
    finally:
        done.set()
        t.join(5)
        srv.close()


def test_the_listing_and_the_calls_are_left_to_the_sdk_off_a_unix_socket(tmp_path):
    cfg = _cfg(tmp_path, "tcp://10.0.0.11:2376")
    with pytest.raises(LookupError):
        docker_peek.containers(cfg, ["io.aixsss.project=p"])
    with pytest.raises(LookupError):
        docker_peek.post_unanswered(cfg, "p-api-blue", "start")
