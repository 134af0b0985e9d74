"""Provision the compose deployment's Girder (idempotent): admin, assetstore, worker settings.

Runs before ``girder serve`` in the girder container (docker/docker-compose.yml). The
nucleus_analysis plugin registers its CLI in HistomicsUI's Analyses menu by itself at start
(and when the first admin is created). Passwords come from the environment.
"""
from __future__ import annotations

import os

from girder.models.assetstore import Assetstore
from girder.models.setting import Setting
from girder.models.user import User
from girder.utility.server import configureServer


def main() -> None:
    """Create what is missing; never touch what exists."""
    configureServer()  # loads plugins so their settings validate
    admin = User().findOne({"admin": True})
    if admin is None:
        User().createUser(
            login=os.environ.get("DSA_ADMIN_LOGIN", "admin"),
            password=os.environ["DSA_ADMIN_PASSWORD"],
            firstName="Admin", lastName="Admin",
            email=os.environ.get("DSA_ADMIN_EMAIL", "admin@example.com"), admin=True)
    if not list(Assetstore().list()):
        Assetstore().createFilesystemAssetstore(name="Assetstore", root="/assetstore")
    broker = os.environ.get("DSA_BROKER", "amqp://guest:guest@rabbitmq/")
    for key, value in {
        "worker.broker": broker,
        "worker.backend": os.environ.get("DSA_BACKEND", "rpc://guest:guest@rabbitmq/"),
        "worker.api_url": os.environ.get("DSA_WORKER_API_URL", "http://girder:8080/api/v1"),
        "worker.direct_path": True,
        "core.brand_name": "Digital Slide Archive",
        "histomicsui.webroot_path": "histomics",
    }.items():
        Setting().set(key, value)


if __name__ == "__main__":
    main()
