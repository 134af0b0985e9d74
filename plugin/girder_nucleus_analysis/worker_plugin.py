"""girder_worker plugin entry point (``girder_worker_plugins``: ``nucleus_analysis``).

Kept apart from :mod:`girder_nucleus_analysis.worker`: girder_worker loads this class while
``girder_worker.app`` is being imported, and the task module imports that app.
"""
from __future__ import annotations

from girder_worker import GirderWorkerPluginABC


class NucleusAnalysisWorkerPlugin(GirderWorkerPluginABC):
    """Tells girder_worker which module holds our task."""

    def __init__(self, app, *args, **kwargs) -> None:
        self.app = app

    def task_imports(self) -> list[str]:
        """Modules holding the tasks."""
        return ["girder_nucleus_analysis.worker"]
