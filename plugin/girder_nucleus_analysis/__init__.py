"""Girder 3 plugin: the nucleus analysis inside the Digital Slide Archive.

Wiring only: ``load()`` registers the REST resource, the CLI item that HistomicsUI lists under
Analyses, and the event handlers that send HistomicsUI's submissions to our girder_worker task
(a local process instead of slicer_cli_web's Docker run). It never imports the engine's
compute stages: the CLI is run by the worker (``worker.py``) and described by its own
``--xml``; requests are checked with the engine's pure-Python option rules
(``slicer_cli.nuclei.options``).
"""
from __future__ import annotations

from girder import logger
from girder.plugin import GirderPlugin, getPlugin


class NucleusAnalysisPlugin(GirderPlugin):
    """Nucleus Analysis: HistomicsUI menu entry, local-process jobs, result ingest.

    The web client is package data at ``web_client/`` (Girder's convention; in the source
    tree it links to the repository's top-level ``client/``), which ``girder build`` bundles.
    """

    DISPLAY_NAME = "Nucleus Analysis"
    CLIENT_SOURCE_PATH = "web_client"

    def load(self, info: dict) -> None:
        """Register settings, the REST resource, the CLI item and the event handlers."""
        # histomicsui loads jobs, worker, slicer_cli_web, large_image(_annotation)
        getPlugin("histomicsui").load(info)

        from . import event_handlers, registration, rest, settings  # noqa: F401 (validators)
        from .constants import JOB_TYPE

        info["apiRoot"].nucleus_analysis = rest.NucleusAnalysisResource()
        event_handlers.intercept(registration.attach(info["apiRoot"].slicer_cli_web))
        event_handlers.bind()
        try:
            event_handlers.intercept(registration.register_at_startup())
        except Exception:  # the server must start even if the CLI cannot be described
            logger.exception("Nucleus Analysis: CLI registration at startup failed")
        logger.info("Nucleus Analysis plugin loaded (job type %s)", JOB_TYPE)
