"""The UserService of ../server.py (with its reflection service) served over TLS:
`python3 tls_server.py CERT KEY`. Prints `PORT <n>` once it serves; stops when its
standard input closes."""

import os
import sys

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import server as users  # noqa: E402


def main(cert, key):
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private = f.read()
    credentials = grpc.ssl_server_credentials([(private, chain)])
    plain = grpc.server

    def tls_server(*args, **kwargs):
        s = plain(*args, **kwargs)
        s.add_insecure_port = lambda addr: s.add_secure_port(addr, credentials)
        return s

    grpc.server = tls_server
    users.serve("v1alpha")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
