"""moto's S3 server for the tests, on a free port it prints once it listens.

moto checks `If-None-Match: *` and then stores the object in two steps, and
its server runs one thread per request: two racing conditional puts could
both succeed, which real S3 never allows. Requests are served one at a time
here so that the tests see S3's atomic create-if-absent.
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def serialised(environ, start_response):
    with lock:
        return list(app(environ, start_response))


server = make_server("127.0.0.1", 0, serialised, threaded=True)
print(f"listening on {server.port}", flush=True)
server.serve_forever()
