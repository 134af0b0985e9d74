"""Start a local DSA for development: DB + Redis + Girder (HistomicsUI, our plugin) + worker.

NOT FOR PRODUCTION (see docker/docker-compose.yml): the database is mongomock inside the
Girder process unless MONGO_URI is set, so everything is lost when this command stops.

    .venv/bin/python scripts/devstack.py [--port 8080] [--workdir /tmp/nucleus-devstack]

It provisions an admin user (admin / password), a filesystem assetstore, the worker settings,
the Nucleus Analysis CLI (HistomicsUI: Analyses -> Nuclei -> Nucleus Analysis) and a
collection "Nucleus Analysis" with the real CMU slide as a large_image item, prints the URLs,
and runs until Ctrl-C. Build the web client first (scripts/setup_girder.sh).
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.girder_stack import ADMIN, Stack  # noqa: E402

BUNDLE = Path(sys.prefix) / "share/girder/static/built/plugins/nucleus_analysis/plugin.min.js"


def main(argv: list[str] | None = None) -> int:
    """Start, provision, print the URLs, wait for Ctrl-C, stop."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workdir", default="",
                        help="logs, assetstore and Redis files (default: a new temp folder)")
    parser.add_argument("--slide", default=str(REPO / "data" / "cmu_small_region.svs"))
    args = parser.parse_args(argv)
    if not Path(args.slide).is_file():
        print(f"error: {args.slide} is missing: run scripts/fetch_data.py", file=sys.stderr)
        return 1
    if not BUNDLE.is_file():
        print(f"warning: no web client at {BUNDLE}: run scripts/setup_girder.sh "
              "(the REST API works without it)", file=sys.stderr)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nucleus-devstack-"))
    stack = Stack(workdir, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stack.start()
        info = stack.provision(slide=args.slide)
        root = stack.api_url.rsplit("/api/v1", 1)[0]
        item = info["slide_item"]
        print(f"""
Girder       {root}/   (login {ADMIN['login']} / {ADMIN['password']})
HistomicsUI  {root}/histomics#?image={item['_id']}
REST API     {stack.api_url}   (docs: {root}/api/v1, docs/REST.md)
slide item   {item['_id']}  ({item['name']})
CLI          {info['cli'][0]['run'] if info['cli'] else 'NOT REGISTERED'}
logs         {workdir}/girder.log, worker.log, redis.log
Ctrl-C stops everything (the mongomock database goes with it).""", flush=True)
        while all(service.alive() for service in stack.services):
            time.sleep(1)
        dead = [s.name for s in stack.services if not s.alive()]
        print(f"error: {', '.join(dead)} stopped; see the logs in {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan services
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
