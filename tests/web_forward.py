"""A tiny 127.0.0.1 TCP -> Unix socket forwarder for the browser tests: it plays the role
of ``ssh -L 8080:/run/labd-socket/web.sock station``. Standard library only, so the tests
can run it as another account (subprocess ``user=``): the daemon then sees that account
through SO_PEERCRED. Prints its port, and exits when its stdin closes (the test ended or
died) or after ``max_s`` seconds: it never outlives the test run."""
from __future__ import annotations

import os
import socket
import sys
import threading


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
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
        sys.stdin.buffer.read()     # EOF: the test is over
        os._exit(0)
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
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 600.0)
