"""Girder 3 plugin: the nucleus analysis inside the Digital Slide Archive.

Wiring only: ``load()`` registers the REST resource, the CLI item that HistomicsUI lists under
Analyses, and the event handlers that send HistomicsUI's submissions to our girder_worker task
(a local process instead of slicer_cli_web's Docker run). It never imports the engine: the
CLI is run by the worker (``worker.py``) and described by its own ``--xml``.
"""
from __future__ import annotations

import os
from pathlib import Path

from girder import events, logger
from girder.plugin import GirderPlugin, getPlugin

#: the HistomicsUI extension's source lives at the repository's top-level ``client/``
_CLIENT_DIRS = (
    os.environ.get("NUCLEUS_ANALYSIS_CLIENT_DIR", ""),
    str(Path(__file__).resolve().parents[2] / "client"),
    str(Path(__file__).resolve().parent / "web_client"),
)


class NucleusAnalysisPlugin(GirderPlugin):
    """Nucleus Analysis: HistomicsUI menu entry, local-process jobs, result ingest."""

    DISPLAY_NAME = "Nucleus Analysis"
    CLIENT_SOURCE_PATH = "web_client"

    def npmPackages(self) -> dict[str, str]:
        """Point ``girder build`` at the web client source (top-level ``client/``).

        Returns
        -------
        dict
            ``{npm package name: "file:<dir>"}``, empty when no client source is installed.
        """
        import json

        for folder in _CLIENT_DIRS:
            package = Path(folder) / "package.json" if folder else None
            if package is not None and package.is_file():
                name = json.loads(package.read_text())["name"]
                return {name: f"file:{package.parent}"}
        return {}

    def load(self, info: dict) -> None:
        """Register settings, the REST resource, the CLI item and the run interceptors."""
        # histomicsui loads jobs, worker, slicer_cli_web, large_image(_annotation)
        getPlugin("histomicsui").load(info)

        from . import registration, rest, settings  # noqa: F401  (validators)
        from .constants import JOB_TYPE

        resource = rest.NucleusAnalysisResource()
        info["apiRoot"].nucleus_analysis = resource
        registration.attach(info["apiRoot"].slicer_cli_web)

        events.bind("model.user.save.created", "nucleus_analysis", registration.on_user_created)
        try:
            registration.register_at_startup()
        except Exception:  # the server must start even if the CLI cannot be described
            logger.exception("Nucleus Analysis: CLI registration at startup failed")
        logger.info("Nucleus Analysis plugin loaded (job type %s)", JOB_TYPE)
