"""REST: the ``/nucleus_analysis`` routes (the event handlers live in :mod:`.event_handlers`)."""
from __future__ import annotations

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import Resource, RestException
from girder.constants import AccessType, TokenScope
from girder.models.item import Item

from . import event_handlers, ingest, launch, registration
from .constants import META_KEY


class NucleusAnalysisResource(Resource):
    """``/nucleus_analysis``: launch on an item, follow, read the result; (re)register."""

    def __init__(self) -> None:
        super().__init__()
        self.resourceName = "nucleus_analysis"
        self.route("GET", ("cli",), self.listClis)
        self.route("PUT", ("register",), self.register)
        self.route("POST", ("item", ":id", "run"), self.run)
        self.route("GET", ("item", ":id"), self.getResult)
        self.route("POST", ("item", ":id", "result"), self.postResult)

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(Description("List the registered Nucleus Analysis CLI items.")
                       .errorResponse("You are not logged in.", 403))
    def listClis(self) -> list[dict]:
        return registration.describe(registration.registered_items(self.getCurrentUser()))

    @access.admin
    @autoDescribeRoute(
        Description("(Re)register the CLI as slicer_cli_web task items (HistomicsUI's "
                    "Analyses menu) from `python -m slicer_cli --list_cli` / `--xml`.")
        .modelParam("folderId", "Folder to register in (default: slicer_cli_web's task "
                    "folder, created as Tasks/Slicer CLI Web Tasks when unset).",
                    model="folder", level=AccessType.WRITE, paramType="query",
                    required=False, destName="folder")
        .errorResponse("You are not a system administrator.", 403)
        .errorResponse("The CLI could not be described.", 500))
    def register(self, folder: dict | None) -> list[dict]:
        try:
            items = registration.register(self.getCurrentUser(), folder)
        except registration.RegistrationError as e:
            raise RestException(f"CLI registration failed: {e}", 500) from e
        event_handlers.intercept(items)
        return registration.describe(items)

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Run the Nucleus Analysis on a slide item; results are posted onto it.")
        .notes("Needs read and write access on the item. The body is a JSON object of CLI "
               "parameters by XML name, e.g. `{\"region\": [0, 0, 1024, 1024], "
               "\"batch_size\": 4}`; omitted ones keep the CLI defaults. Returns the Girder "
               "job; follow it with `GET /job/{id}` and cancel with `PUT /job/{id}/cancel`.")
        .modelParam("id", "The slide item.", model=Item, level=AccessType.WRITE)
        .param("fileId", "Slide file in the item (default: the item's large image file).",
               required=False)
        .jsonParam("parameters", "CLI parameters (JSON object).", paramType="body",
                   required=False, requireObject=True, default=None)
        .errorResponse("Invalid parameter or item without a slide.", 400)
        .errorResponse("Read and write access on the item are required.", 403))
    def run(self, item: dict, fileId: str | None, parameters: dict | None) -> dict:
        user = self.getCurrentUser()
        file = launch.slide_file(item, user, fileId)
        job = launch.launch(user, item, file, registration.cli_item(user), parameters or {},
                            strict=True)
        return event_handlers.public_job(job, user)

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("Summary of the last successful Nucleus Analysis of an item.")
        .notes("The item's `meta.nucleusAnalysis`: model, version, parameters, job id, "
               "counts per class, annotation ids and the feature table files; `{}` if none.")
        .modelParam("id", "The slide item.", model=Item, level=AccessType.READ))
    def getResult(self, item: dict) -> dict:
        return item.get("meta", {}).get(META_KEY, {})

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Ingest a finished job's outputs (called by the worker).")
        .notes("Validates the uploaded annotation file against large_image's schema, posts "
               "it (one annotation per class), replaces the previous result of this analysis "
               "on the item, keeps the feature table files and records the summary in the "
               "item metadata. Any failure removes the uploaded files and answers 400.")
        .modelParam("id", "The slide item.", model=Item, level=AccessType.WRITE)
        .param("jobId", "The job that produced the outputs.")
        .param("annotationFileId", "Uploaded .anot file (in the item).")
        .jsonParam("tableFileIds", "Uploaded feature table files (in the item).",
                   requireArray=True)
        .errorResponse("Invalid or inconsistent outputs.", 400)
        .errorResponse("Write access on the item is required.", 403))
    def postResult(self, item: dict, jobId: str, annotationFileId: str,
                   tableFileIds: list) -> dict:
        return ingest.ingest(self.getCurrentUser(), item, jobId, annotationFileId, tableFileIds)
