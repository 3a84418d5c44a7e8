"""Serving an eden plugin from Python (design/plugins.md): the handshake, the Unix socket, the
health service. A plugin module gives `serve` a Provider servicer (plugin_pb2_grpc)."""

import os
import signal
import sys
import tempfile
import threading
from concurrent import futures

import grpc

import health_pb2
import health_pb2_grpc
import plugin_pb2_grpc

MAGIC_COOKIE_KEY = "EDEN_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE = "d6f1c4a0e8b94f2a9c7e3b5d1a0f6e2c"
PROTOCOL_VERSION = "1"


class Health(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING
        )


def serve(provider):
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        print("this is an eden plugin: the eden agent starts it", file=sys.stderr)
        sys.exit(1)
    offered = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", "").split(",")
    if PROTOCOL_VERSION not in [v.strip() for v in offered]:
        print(f"the agent offers protocol versions {offered}; this plugin speaks 1", file=sys.stderr)
        sys.exit(1)
    sock_dir = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or tempfile.gettempdir()
    path = os.path.join(sock_dir, f"plugin-{os.getpid()}.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    plugin_pb2_grpc.add_ProviderServicer_to_server(provider, server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    os.chmod(path, 0o600)
    # The handshake: the one line on stdout. Everything else goes to stderr.
    print(f"1|{PROTOCOL_VERSION}|unix|{path}|grpc", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1)
    try:
        os.unlink(path)
    except OSError:
        pass
