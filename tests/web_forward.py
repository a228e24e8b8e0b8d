"""A tiny 127.0.0.1 TCP -> Unix socket forwarder for the browser tests: it plays the role
of ``ssh -L 8080:/run/labd-socket/web.sock station``. Standard library only, so the tests
can run it as another account (subprocess ``user=``): the daemon then sees that account
through SO_PEERCRED. Prints its port, and exits when its stdin closes (the test ended or
died) or after ``max_s`` seconds: it never outlives the test run.

A line ``freeze`` on stdin makes the connections that carry an event stream (GET /events)
go silent without closing, as a half-open ssh tunnel does: bytes are read from the daemon
and never passed on. Later connections are forwarded as usual."""
from __future__ import annotations

import os
import socket
import sys
import threading


class Conn:
    def __init__(self) -> None:
        self.events = False                 # it carried GET /events
        self.flowing = threading.Event()
        self.flowing.set()


conns: list[Conn] = []
lock = threading.Lock()


def freeze() -> None:
    with lock:
        for c in conns:
            if c.events:
                c.flowing.clear()


def pipe(src: socket.socket, dst: socket.socket, conn: Conn, upstream: bool) -> None:
    try:
        while data := src.recv(65536):
            if upstream and b"GET /events" in data:
                conn.events = True
            conn.flowing.wait()             # frozen: forever (a daemon thread)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(unix_path: str, max_s: float) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    print(lsock.getsockname()[1], flush=True)

    def watch_stdin() -> None:
        for line in sys.stdin.buffer:
            if line.strip() == b"freeze":
                freeze()
                print("frozen", flush=True)
        os._exit(0)                 # EOF: the test is over
    threading.Thread(target=watch_stdin, daemon=True).start()
    threading.Timer(max_s, os._exit, (0,)).start()
    while True:
        client, _ = lsock.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(unix_path)
        except OSError:   # daemon restarting: the browser sees a reset and retries
            client.close()
            upstream.close()
            continue
        conn = Conn()
        with lock:
            conns.append(conn)
        for a, b, up in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=pipe, args=(a, b, conn, up), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 600.0)
