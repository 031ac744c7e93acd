"""The HTTP ceiling: a bare bottle + gevent app that answers
`POST /api/v1/jobs/<name>` with 202 and a small JSON body, served as litejobs
serves (gevent's WSGIServer, TCP_NODELAY on every connection, no access log),
so the enqueue row's client can be pointed at the server alone.

    .venv/bin/python bench/bench_ceiling.py PORT
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

import bottle  # noqa: E402
from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

app = bottle.Bottle()


@app.post("/api/v1/jobs/<name>")
def accept(name):
    bottle.response.status = 202
    bottle.response.content_type = "application/json"
    return json.dumps({"id": str(uuid.uuid4()), "name": name, "status": "queued"})


@app.get("/health/live")
def live():
    bottle.response.content_type = "application/json"
    return '{"status": "ok"}'


class NoDelayHandler(WSGIHandler):
    def handle(self):
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None, handler_class=NoDelayHandler).serve_forever()
