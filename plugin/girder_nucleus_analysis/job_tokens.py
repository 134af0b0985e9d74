"""The data token a job's worker uses: least scope, shortest life, revoked at every end.

The worker reads the slide, uploads the outputs into the item and posts them for ingest; it
needs :data:`SCOPES` (data read and write) and nothing else: job status and log go through
girder_worker's own per-job token (scope ``jobs.job_<id>``), and a data token cannot call
anything that needs a full user login (``user/me``, tokens, API keys, settings).

The token expires at the job's deadline (submission + ``nucleus_analysis.job_time_limit_s``)
and is removed from the database as soon as the job succeeds, fails, is canceled or asked to
cancel (also while still queued, when the worker never sees it), or cannot be queued. It is
found again by the launch id recorded on both the token and the job, so the token itself is
stored nowhere but in Girder's token collection, and never logged.

girder_worker's own per-job token (scope ``jobs.job_<id>``, in the job's ``jobInfoSpec`` and
the broker message; girder_jobs gives it 7 days) is cut to expire
:data:`WORKER_TOKEN_GRACE_S` after the job has ended (succeeded, failed or was canceled), the
time the worker needs to send its last log lines. It is not removed at once because the
worker writes the job once more after its final status (celery's ``task_postrun`` flush). A
scoped token's expiry is enforced by MongoDB's TTL index on ``expires`` (Girder checks it
only for login tokens), within a minute of the time.
"""
from __future__ import annotations

import datetime
import uuid

from girder.constants import TokenScope
from girder.models.token import Token

from .constants import ATTR_KEY

#: what the worker's token may do
SCOPES = (TokenScope.DATA_READ, TokenScope.DATA_WRITE)
#: seconds girder_worker's per-job token outlives its job's end
WORKER_TOKEN_GRACE_S = 300
#: the token document's field naming the launch it belongs to
LAUNCH_FIELD = "nucleusAnalysisLaunch"


def new_launch_id() -> str:
    """A fresh random id tying a launch's job to its token."""
    return uuid.uuid4().hex


def create(user: dict, launch_id: str, deadline: datetime.datetime) -> dict:
    """A data-only token of ``user`` that expires at ``deadline`` (UTC, naive).

    Returns
    -------
    dict
        The token document (its ``_id`` is the token).
    """
    seconds = max(60.0, (deadline - datetime.datetime.utcnow()).total_seconds())
    token = Token().createToken(user=user, days=seconds / 86400.0, scope=list(SCOPES))
    Token().update({"_id": token["_id"]}, {"$set": {LAUNCH_FIELD: launch_id}})
    return token


def revoke_launch(launch_id: str | None) -> int:
    """Remove the token(s) of one launch; returns how many were removed."""
    if not launch_id:
        return 0
    return Token().collection.delete_many({LAUNCH_FIELD: launch_id}).deleted_count


def revoke_for_job(job: dict) -> int:
    """Remove the data token of a job of ours (found by the job's launch id)."""
    return revoke_launch((job.get(ATTR_KEY) or {}).get("launch"))


def shorten_worker_token(job: dict) -> bool:
    """Make girder_worker's token of this ended job expire :data:`WORKER_TOKEN_GRACE_S` from
    now (never later than it would have); True if it was shortened."""
    token = ((job.get("jobInfoSpec") or {}).get("headers") or {}).get("Girder-Token")
    if not token or "_id" not in job:
        return False
    expires = datetime.datetime.utcnow() + datetime.timedelta(seconds=WORKER_TOKEN_GRACE_S)
    result = Token().collection.update_one(
        {"_id": token, "scope": f"jobs.job_{job['_id']}", "expires": {"$gt": expires}},
        {"$set": {"expires": expires}})
    return result.modified_count > 0
