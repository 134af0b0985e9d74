"""``python -m tests.girder_stack.serve``: one Girder HTTP server (cherrypy) with our plugins.

FOR TESTS AND THE DEV STACK ONLY. The database is MongoDB at ``--mongo-uri`` (or the
``MONGO_URI`` environment variable) when given, else an in-process mongomock database with the
shims of :mod:`tests.girder_stack.shims` (lost when this process ends).
"""
from __future__ import annotations

import argparse
import os

#: plugins loaded (their dependencies load with them)
PLUGINS = ["nucleus_analysis", "histomicsui"]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, configure Girder, serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mongo-uri", default=os.environ.get("MONGO_URI", ""))
    args = parser.parse_args(argv)

    uri = args.mongo_uri or "mongodb://localhost:27017/girder_devstack"
    if not args.mongo_uri:
        from tests.girder_stack import shims

        shims.apply()

    import logging
    import sys

    import cherrypy
    from girder import logger
    from girder.utility import server

    handler = logging.StreamHandler(sys.stdout)  # tracebacks into the stack's girder.log
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    cherrypy.config["database"]["uri"] = uri
    cherrypy.config["server.socket_host"] = args.host
    cherrypy.config["server.socket_port"] = args.port
    cherrypy.config["server.thread_pool"] = 12
    server.setup(plugins=PLUGINS)
    cherrypy.engine.signal_handler.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == "__main__":
    main()
