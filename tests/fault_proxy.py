"""Real proxies on 127.0.0.1 that inject faults: FaultProxy for HTTP, TcpRelay for any TCP service.

It stands where nginx or the network would: between a client and a real
litejobs server. Each request it reads takes the next action of its `plan`
(then "pass"):

- "pass": forward it to the server and relay the answer;
- "drop": close the connection without forwarding it (the server never sees it);
- "drop_after": forward it, let the server answer, then close without relaying
  the answer (the server did the work; the client cannot know);
- "stall": never answer (until the proxy stops);
- `(status, headers)` or `(status, headers, body)`: answer that itself, by
  default in the API's error shape with an `X-Request-Id` of `proxy-N`.

With `prefix`, it serves the app under that path (as a reverse proxy does) and
strips it before forwarding; other paths get 404. It records every request
(method, path, lower-cased headers) and counts the connections it accepted.
"""

import http.client
import json
import socket
import socketserver
import threading

ERROR_CODES = {
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    507: "insufficient_storage",
}


class FaultProxy:
    def __init__(self, upstream_port, plan=(), prefix=""):
        self.upstream_port, self.prefix = upstream_port, prefix.rstrip("/")
        self.plan = list(plan)
        self.requests = []  # (method, path as received, {header: value}), in arrival order
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with proxy.lock:
                    proxy.connections += 1
                while proxy._serve_one(self.rfile, self.wfile):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass  # a client or server that went away mid-request: the test sees it itself

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{self.prefix}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def paths(self, method=None):
        return [path for m, path, _ in self.requests if method is None or m == method]

    # -- One request -----------------------------------------------------------------
    def _serve_one(self, rfile, wfile):
        """Read one request and act on it; False when the connection is done."""
        line = rfile.readline(65537)
        if not line.strip():
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while True:
            header = rfile.readline(65537).decode("latin-1")
            if header in ("\r\n", "\n", ""):
                break
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        lowered = {name.lower(): value for name, value in headers.items()}
        body = rfile.read(int(lowered.get("content-length", 0) or 0))
        with self.lock:
            self.requests.append((method, path, lowered))
            number = len(self.requests)
            action = self.plan.pop(0) if self.plan else "pass"
        if action == "drop":
            return False
        if action == "stall":
            self.stopping.wait(30)
            return False
        if isinstance(action, tuple):
            wfile.write(self._canned(number, *action))
            return True
        if self.prefix:
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                wfile.write(self._canned(number, 404, {}, b"<html>404 Not Found</html>"))
                return True
            path = path[len(self.prefix) :] or "/"
        answer = self._forward(method, path, headers, body)
        if action == "drop_after":
            return False
        wfile.write(answer)
        return lowered.get("connection", "").lower() != "close"

    def _forward(self, method, path, headers, body):
        """Send the request to the server on a new connection; its answer as bytes to relay."""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            skip = {"host", "connection", "keep-alive", "content-length"}
            sent = {name: value for name, value in headers.items() if name.lower() not in skip}
            conn.request(method, path, body=body or None, headers=sent)
            reply = conn.getresponse()
            content = reply.read()
            lines = [f"HTTP/1.1 {reply.status} {reply.reason}"]
            skip |= {"transfer-encoding"}
            lines += [f"{name}: {value}" for name, value in reply.getheaders() if name.lower() not in skip]
            lines += [f"Content-Length: {len(content)}", "Connection: keep-alive"]
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content
        finally:
            conn.close()

    @staticmethod
    def _canned(number, status, headers, body=None):
        if body is None:
            error = {"code": ERROR_CODES.get(status, "internal"), "message": f"injected by the test proxy ({status})"}
            body = json.dumps({"error": error}).encode()
            headers = {"Content-Type": "application/json", **headers}
        headers = {"X-Request-Id": f"proxy-{number}", **headers, "Content-Length": str(len(body))}
        head = f"HTTP/1.1 {status} {http.client.responses.get(status, 'Error')}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return (head + "\r\n").encode("latin-1") + body


class TcpRelay:
    """A plain TCP relay to `host`:`port` that can be cut and restored.

    Cut, it closes every relayed connection and closes new ones at once: to a
    server behind it (Redis, PostgreSQL), the service looks down.
    """

    def __init__(self, host, port):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_cut = False
        self.sockets = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        with self.lock:
            self.is_cut = True
            sockets, self.sockets = self.sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self):
        with self.lock:
            self.is_cut = False

    def stop(self):
        self.cut()
        _close(self.listener)

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            with self.lock:
                refused = self.is_cut
            if refused:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source, target):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
