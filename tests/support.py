"""Helpers shared by the tests."""

from __future__ import annotations

import threading


def serve_in_thread(server) -> threading.Thread:
    """Run an ExporterServer's (any socketserver's) serve_forever in a daemon thread."""
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    t.start()
    return t
