"""Girder event handlers of the plugin (bound in ``load()``; no routes here).

* ``rest.post.slicer_cli_web/.../run.before`` (and ``rerun``, and the named route):
  HistomicsUI's Submit becomes our local-process job instead of slicer_cli_web's Docker run;
* ``jobs.job.update.after``: a job of ours that ends (or is asked to cancel) loses its data
  token at once, and girder_worker's job token expires a few minutes after the end;
* ``rest.get.job...after``: girder_worker's per-job token (``jobInfoSpec``) is not shown to
  non-admins reading our jobs;
* ``model.user.save.created``: the CLI is registered once the first admin exists;
* ``rest.post.annotation/item/:id/plot/(list|data).before``: a Metadata Plot request cancels
  only older ones of its page (:mod:`.plot_requests`).
"""
from __future__ import annotations

from girder import events, logger
from girder.api import access
from girder.api.rest import RestException, getCurrentUser
from girder.constants import AccessType, TokenScope
from girder.models.file import File
from girder.models.item import Item
from girder.models.setting import Setting
from girder_jobs.models.job import Job

from . import job_tokens, launch, plot_requests, registration
from .constants import ENDED_STATUSES, JOB_TYPE, TOKEN_DEAD_STATUSES, PluginSettings

_NAME = "nucleus_analysis"


def public_job(job: dict, user: dict) -> dict:
    """The job as the user may see it, without girder_worker's job token (``jobInfoSpec``)."""
    shown = Job().filter(job, user)
    shown.pop("jobInfoSpec", None)
    return shown


@access.user(scope=TokenScope.DATA_WRITE)
def intercept_run(event) -> None:
    """``POST slicer_cli_web/cli/<our id>/run`` (HistomicsUI's Submit): run as a local job."""
    user = getCurrentUser()
    cli_item = registration.cli_item(user)
    params = dict(event.info.get("params") or {})
    file_id = params.get("inputImageFile")
    if not file_id:
        raise RestException("Parameter inputImageFile is required.")
    file = File().load(file_id, user=user, level=AccessType.READ, exc=True)
    item = Item().load(file["itemId"], user=user, level=AccessType.WRITE, exc=True)
    job = launch.launch(user, item, file, cli_item, params, strict=False)
    event.preventDefault().addResponse(public_job(job, user))


@access.user(scope=TokenScope.DATA_WRITE)
def intercept_rerun(event) -> None:
    """``POST slicer_cli_web/cli/<our id>/rerun``: rerun a previous job with its parameters."""
    params = dict(event.info.get("params") or {})
    job_id = params.pop("jobId", None)
    if not job_id:
        raise RestException("Parameter jobId is required.")
    previous = Job().load(job_id, user=getCurrentUser(), level=AccessType.READ, exc=True)
    merged = dict(previous.get("_original_params") or {})
    merged.update(params)
    event.info["params"] = merged
    intercept_run(event)


def intercept(cli_items) -> None:
    """Answer slicer_cli_web's run/rerun routes of these CLI items with our job."""
    for cli_item in cli_items:
        base = f"rest.post.slicer_cli_web/cli/{cli_item._id}"
        named = f"rest.post.slicer_cli_web/{cli_item.restBasePath}/{cli_item.name}"
        for prefix in (base, named):
            events.bind(f"{prefix}/run.before", _NAME, intercept_run)
            events.bind(f"{prefix}/rerun.before", _NAME, intercept_rerun)


def on_job_update(event) -> None:
    """Revoke a job's data token once it succeeded, failed, was canceled or is canceling;
    cut girder_worker's job token to a few minutes once the job has ended."""
    job = event.info.get("job") or {}
    if job.get("type") != JOB_TYPE:
        return
    if job.get("status") in TOKEN_DEAD_STATUSES and job_tokens.revoke_for_job(job):
        logger.info("Nucleus Analysis: job %s ended (status %s); its token is revoked",
                    job.get("_id"), job.get("status"))
    if job.get("status") in ENDED_STATUSES and job_tokens.shorten_worker_token(job):
        logger.info("Nucleus Analysis: job %s ended; girder_worker's job token expires in %d s",
                    job.get("_id"), job_tokens.WORKER_TOKEN_GRACE_S)


def _hide_job_token(event) -> None:
    user = getCurrentUser()
    if user is not None and user.get("admin"):
        return
    shown = event.info.get("returnVal")
    for job in shown if isinstance(shown, list) else [shown]:
        if isinstance(job, dict) and job.get("type") == JOB_TYPE:
            job.pop("jobInfoSpec", None)


def on_user_created(event) -> None:
    """Register once the first admin exists (fresh database)."""
    user = event.info
    if user.get("admin") and not registration.is_registered() and \
            Setting().get(PluginSettings.AUTO_REGISTER):
        try:
            intercept(registration.register(user))
        except registration.RegistrationError:
            logger.exception("Nucleus Analysis: CLI registration failed")


#: large_image's Metadata Plot routes (POST), whose ``uuid`` cancels a running request
PLOT_ROUTES = {"rest.post.annotation/item/:id/plot/list.before": "list",
               "rest.post.annotation/item/:id/plot/data.before": "data"}


@access.public(cookie=True, scope=TokenScope.DATA_READ)  # the routes' own access
def order_plot_requests(event) -> None:
    """Let a Metadata Plot request cancel only older ones of its page (see
    :mod:`.plot_requests`): its ``uuid`` is made the user's and the route's and tagged with its
    number, or dropped when it has none."""
    params = event.info.get("params")
    if not isinstance(params, dict):
        return
    user = getCurrentUser()
    uuid = plot_requests.run_uuid(params.pop("uuid", None), params.pop("seq", None),
                                  PLOT_ROUTES.get(event.name, event.name),
                                  user["_id"] if user else None)
    if uuid:
        params["uuid"] = uuid


def bind() -> None:
    """Bind every handler (called once by ``load()``)."""
    events.bind("jobs.job.update.after", _NAME, on_job_update)
    for route in ("rest.get.job/:id.after", "rest.get.job.after", "rest.get.job/all.after"):
        events.bind(route, _NAME, _hide_job_token)
    events.bind("model.user.save.created", _NAME, on_user_created)
    plot_requests.install()
    for route in PLOT_ROUTES:
        events.bind(route, _NAME, order_plot_requests)
