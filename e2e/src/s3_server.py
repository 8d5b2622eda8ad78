# moto's S3 server for the object-store backup test (e2e/src/s3.rs runs it).
# Werkzeug ends a connection by shutting the TLS socket down without a close_notify,
# which pgBackRest (OpenSSL 3) reads as "unexpected eof": unwrap the TLS session
# first, so each response ends the way TLS says it should.
import socketserver
import sys

import werkzeug.serving as serving


def shutdown_request(self, request):
    try:
        request.unwrap()
    except Exception:
        pass
    socketserver.TCPServer.shutdown_request(self, request)


serving.BaseWSGIServer.shutdown_request = shutdown_request

from moto.server import main  # noqa: E402

main(sys.argv[1:])
