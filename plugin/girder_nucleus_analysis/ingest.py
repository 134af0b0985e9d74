"""Server-side ingest of a finished job's outputs: validated, staged, swapped in; newest wins.

HistomicsUI's own ingest (``data.process`` on a background thread) only logs its errors while
the job says SUCCESS; here the worker calls ``POST nucleus_analysis/item/{id}/result`` and any
parse/validation error answers 400 with a readable message, which the worker turns into an
ERROR job. One annotation document per class is posted (``Nuclei: <class>``), so HistomicsUI
can show and hide classes natively; every element keeps ``group`` = class and ``user.id``.

How a result replaces the previous one without losing anything:

1. The worker uploaded the outputs as *new* files named ``<name>.pending-<job id>``: the
   previous result's files are untouched until step 4.
2. Newest job wins: the job claims the item (an atomic compare-and-set on a private item
   field, ordered by job creation time). A job older than the one that already claimed or
   posted is refused (409) and its files removed; so a late, older job never replaces a newer
   result, and Submit twice posts the second.
3. The annotation is read (at most large_image's ``max_annotation_input_file_length``),
   validated against large_image's schema, and *staged*: its per-class annotations are
   created attached to no item, so readers keep seeing the previous result meanwhile.
4. Swap, under a per-item lock and only if the claim still holds: the item metadata names the
   new result, the staged annotations are attached to the item, the previous result's
   annotations and files are removed, the new files get their final names. A reader sees the
   previous or the new result; at most for the few milliseconds between attaching the new
   annotations and removing the old ones, both.
5. Annotations of a previous result that a person edited in HistomicsUI (``updated`` later
   than ``created``) are never removed: they stay on the item, renamed ``... (edited, kept)``,
   with their ``nucleusAnalysis`` attribute moved to ``nucleusAnalysisKept``.

Any failure at any step removes what this ingest created (staged annotations, uploaded files)
and leaves the previous result exactly as it was: 400 for invalid outputs, 409 when
superseded, 500 (with the error's type) for anything else.
"""
from __future__ import annotations

import datetime
import threading
import time

import jsonschema
from girder import logger
from girder.api.rest import RestException
from girder.constants import AccessType
from girder.exceptions import ValidationException
from girder.models.file import File
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.notification import Notification
from girder.models.user import User
from girder_jobs.models.job import Job
from girder_large_image_annotation.models.annotation import Annotation

from .annotation_stream import Density, ElementValidator, StagedClass, Stager, stage_file
from .constants import (
    ATTR_KEY,
    DETAIL_LIMIT,
    JOB_TYPE,
    META_KEY,
    STATUS_CANCELED,
    STATUS_CANCELING,
    STATUS_ERROR,
)

#: large_image's default for ``max_annotation_input_file_length`` (what its own ingest reads)
DEFAULT_MAX_ANNOTATION_BYTES = 1024 ** 3
#: suffix of uploaded outputs until swapped in (the worker's ``PENDING``)
PENDING = ".pending-"
#: private item field (not exposed by Girder's item filter): who claimed / posted last
STATE_FIELD = "nucleusAnalysisState"
#: annotation attribute of a previous result's annotation a person edited (kept on rerun)
KEPT_KEY = "nucleusAnalysisKept"

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class Superseded(Exception):
    """A newer job of the same item claimed or posted its result first."""


def max_annotation_bytes() -> int:
    """large_image's ``max_annotation_input_file_length`` (bytes it reads into memory)."""
    import large_image

    return int(large_image.config.getConfig("max_annotation_input_file_length",
                                            DEFAULT_MAX_ANNOTATION_BYTES))


def _item_lock(item_id) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(item_id), threading.Lock())


def _order(job: dict) -> str:
    """Sort key of jobs: creation time, then id (fixed width, compares as a string)."""
    created = job.get("created") or datetime.datetime.min
    return f"{created:%Y%m%dT%H%M%S.%f}-{job['_id']}"


def _why(error: jsonschema.ValidationError) -> str:
    """The most relevant schema complaint, short enough to read in a job log.

    For large_image's ``anyOf`` over element types, the complaint comes from the branch whose
    ``type`` matched (not from, say, the rectangle branch rejecting a polyline).
    """
    best = error
    if error.context:
        branches: dict = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        matching = [errs for errs in branches.values()
                    if not any(list(e.relative_path) == ["type"] for e in errs)]
        best = (matching[0][0] if matching else
                jsonschema.exceptions.best_match(error.context)) or error
    where = "/".join(str(p) for p in best.absolute_path)
    message = best.message if len(best.message) <= 200 else best.message[:200] + "..."
    return f"{where}: {message}" if where else message


def _stage(item: dict, user: dict, document: dict) -> dict:
    """large_image's ``createAnnotation`` without its per-element re-validation, attached to
    no item yet (readers of the item do not see it until :func:`_swap`)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    doc = {"itemId": None, "creatorId": user["_id"], "created": now,
           "updatedId": user["_id"], "updated": now, "annotation": document}
    folder = Folder().load(item["folderId"], force=True)
    model = Annotation()
    model.copyAccessPolicies(src=folder, dest=doc, save=False)
    model.setPublic(doc, folder.get("public", False), save=False)
    model.setUserAccess(doc, user=user, level=AccessType.ADMIN, save=False)
    return model.save(doc, validate=False)


def _staged(staged: list[dict], annotation: dict) -> dict:
    staged.append(annotation)
    return annotation


def _slide_size(item: dict) -> tuple[int, int] | None:
    """``(width, height)`` in base pixels of the item's large image, if it has one."""
    if not item.get("largeImage"):
        return None
    try:
        from girder_large_image.models.image_item import ImageItem

        meta = ImageItem().getMetadata(item)
        return int(meta["sizeX"]), int(meta["sizeY"])
    except Exception:  # no readable image: no density annotations, outlines shown as before
        logger.info("Nucleus Analysis: no image size for item %s", item["_id"])
        return None


def _stage_density(item: dict, user: dict, staged: list[dict], classes: list[StagedClass],
                   density: Density, header: dict, job_id: str) -> None:
    """One ``griddata`` heatmap annotation per class (``Nuclei density: <class>``), shown by
    default; the outline annotations of a result this large are not (``DETAIL_LIMIT``)."""
    from girder_large_image_annotation.models.annotationelement import Annotationelement

    now = datetime.datetime.now(datetime.timezone.utc)
    lock = threading.Lock()
    base = str(header.get("name") or "Nuclei")
    for cls in classes:
        if not cls.name or cls.name not in density.counts:
            continue
        annotation = _staged(staged, _stage(item, user, {
            "name": f"{base} density: {cls.name}", "elements": []}))
        element = density.element(cls.name, cls.color)
        Annotationelement().updateElementChunk([element], 0, 1, annotation, now, lock)
        marker = {"jobId": job_id, "class": cls.name, "density": True,
                  "count": element["user"]["nuclei"], "cell": density.cell}
        Annotation().update({"_id": annotation["_id"]}, {"$set": {
            "annotation.description": f"nuclei of class {cls.name} per {density.cell} px cell",
            "annotation.attributes": {ATTR_KEY: marker},
            "annotation.display": {"visible": True},
            "_elementCount": 1, "_detailsCount": len(element["values"]),
            "groups": [cls.name]}}, multi=False)
        cls.density_id = str(annotation["_id"])


def _describe(classes: list[StagedClass], header: dict, job_id: str,
              shown: bool = True) -> None:
    """Name, describe and count each staged class annotation (raw updates: still staged);
    ``shown`` False keeps HistomicsUI from drawing the outlines when the slide opens."""
    base = str(header.get("name") or "Nuclei")
    attributes = dict(header.get("attributes") or {}) if isinstance(
        header.get("attributes"), dict) else {}
    display = header.get("display") if isinstance(header.get("display"), dict) else {}
    display = {**display, "visible": bool(display.get("visible", True)) and shown}
    for staged in classes:
        marker = {"jobId": job_id, "class": staged.name, "count": staged.count,
                  "color": staged.color}
        Annotation().update({"_id": staged.annotation["_id"]}, {"$set": {
            "annotation.name": f"{base}: {staged.name}" if staged.name else base,
            "annotation.description": str(header.get("description") or ""),
            "annotation.attributes": {**attributes, ATTR_KEY: marker},
            "annotation.display": display,
            "_elementCount": staged.count, "_detailsCount": staged.details,
            "groups": [staged.name] if staged.name else []}}, multi=False)


def _remove_files(files: list[dict]) -> None:
    for file in files:
        try:
            File().remove(file)
        except Exception:  # best effort: the request already failed for a named reason
            logger.exception("Nucleus Analysis: could not remove %s", file.get("_id"))


def _remove_annotations(annotations: list[dict]) -> None:
    """Delete staged annotations and their elements for good (never shown, no history)."""
    from girder_large_image_annotation.models.annotationelement import Annotationelement

    for annotation in annotations:
        try:
            Annotationelement().removeElements(annotation)
            Annotation().collection.delete_one({"_id": annotation["_id"]})
        except Exception:
            logger.exception("Nucleus Analysis: could not remove annotation %s",
                             annotation.get("_id"))


def _load_files(user: dict, item: dict, job_id: str, file_ids: list[str]) -> list[dict]:
    files = []
    for file_id in file_ids:
        file = File().load(file_id, user=user, level=AccessType.WRITE)
        if file is None or str(file["itemId"]) != str(item["_id"]):
            raise ValidationException(f"output file {file_id} is not in item {item['_id']}")
        files.append(file)
    return files


def _is_pending(file: dict, job_id: str) -> bool:
    """Whether ``file`` is an output this job uploaded (the only files an ingest removes)."""
    suffix = f"{PENDING}{job_id}"
    return file["name"].endswith(suffix) and file["name"] != suffix


def _check_pending(files: list[dict], job_id: str) -> None:
    for file in files:
        if not _is_pending(file, job_id):
            raise ValidationException(f"output file {file['_id']} is not a pending output of "
                                      f"job {job_id} (its name must end with "
                                      f"{PENDING}{job_id})")


def _load_job(user: dict, item: dict, job_id: str) -> dict:
    job = Job().load(job_id, user=user, level=AccessType.READ, exc=True)
    if job.get("type") != JOB_TYPE or \
            str(job.get(ATTR_KEY, {}).get("itemId")) != str(item["_id"]):
        raise ValidationException(f"job {job_id} is not a Nucleus Analysis of this item")
    if job.get("status") in (STATUS_CANCELING, STATUS_CANCELED):
        raise ValidationException(f"job {job_id} was canceled; its outputs are discarded")
    if job.get("status") == STATUS_ERROR:
        raise ValidationException(f"job {job_id} ended in error; its outputs are discarded")
    return job


def _claim(item: dict, job: dict) -> None:
    """Claim the item for ``job`` unless a newer job claimed it (atomic).

    Raises
    ------
    Superseded
        When a job created later already claimed or posted a result on this item.
    """
    order = _order(job)
    claimed = Item().collection.find_one_and_update(
        {"_id": item["_id"], "$or": [{f"{STATE_FIELD}.claim": {"$exists": False}},
                                     {f"{STATE_FIELD}.claim.order": {"$lte": order}}]},
        {"$set": {f"{STATE_FIELD}.claim": {"jobId": str(job["_id"]), "order": order}}})
    if claimed is None:
        newer = (Item().collection.find_one({"_id": item["_id"]}) or {}).get(
            STATE_FIELD, {}).get("claim", {})
        raise Superseded(f"a newer Nucleus Analysis of this item (job {newer.get('jobId')}) "
                         "has already posted or is posting its result")


def _release(item: dict, job: dict) -> None:
    """Give a failed job's claim back to the job whose result the item shows (if any)."""
    current = (Item().collection.find_one({"_id": item["_id"]}) or {}).get(STATE_FIELD, {})
    restore = {"$set": {f"{STATE_FIELD}.claim": current["current"]}} if current.get(
        "current") else {"$unset": {f"{STATE_FIELD}.claim": ""}}
    Item().collection.update_one(
        {"_id": item["_id"], f"{STATE_FIELD}.claim.jobId": str(job["_id"])}, restore)


def _still_claimed(item: dict, job: dict) -> bool:
    current = (Item().collection.find_one({"_id": item["_id"]}) or {}).get(STATE_FIELD, {})
    return current.get("claim", {}).get("jobId") == str(job["_id"])


def ingest(user: dict, item: dict, job_id: str, annotation_file_id: str,
           table_file_ids: list[str]) -> dict:
    """Post a finished job's outputs onto ``item``, replacing this analysis' previous result.

    Parameters
    ----------
    user : dict
        The job's user (WRITE on ``item``, checked by the route).
    item : dict
        The slide item; the output files were uploaded into it as pending files.
    job_id : str
        The producing job (our job type, for this item, running, not canceled).
    annotation_file_id : str
        The uploaded ``.anot`` file (removed once ingested).
    table_file_ids : list of str
        The uploaded CSV / Parquet files (kept on the item under their final names).

    Returns
    -------
    dict
        The summary stored in ``item.meta.nucleusAnalysis``.

    Raises
    ------
    RestException
        400 when a file is missing, foreign or not this job's, the job does not match, or the
        annotation is not one valid document; 409 when a newer job of this item already
        claimed or posted; 500 on any other failure. In every case what this ingest created
        (and the uploaded files) is removed and the previous result is untouched.
    """
    files: list[dict] = []
    staged: list[dict] = []
    job = None
    try:
        files = _load_files(user, item, job_id, [annotation_file_id, *table_file_ids])
        job = _load_job(user, item, job_id)
        _check_pending(files, job_id)
        with _item_lock(item["_id"]):
            _claim(item, job)
            started = time.perf_counter()
            size = _slide_size(item)
            density = Density(*size) if size else None
            stager = Stager(lambda document: _staged(staged, _stage(item, user, document)),
                            density=density)
            header = stage_file(files[0], ElementValidator(Annotation(), _why), stager,
                                max_annotation_bytes())
            try:
                Annotation().validatorAnnotation.validate({**header, "elements": []})
            except jsonschema.ValidationError as e:
                raise ValidationException(f"annotation: {_why(e)}") from e
            classes = stager.finish()
            staged_s = time.perf_counter() - started
            if not classes:  # no nucleus: one empty annotation says so
                classes = [StagedClass("unclassified", _staged(staged, _stage(
                    item, user, {"name": "Nuclei", "elements": []})))]
                classes[0].name = None
            large = sum(c.count for c in classes) > DETAIL_LIMIT and density is not None
            if large:
                _stage_density(item, user, staged, classes, density, header, job_id)
            _describe(classes, header, job_id, shown=not large)
            summary = _summarise(job, classes, staged, files[1:], header)
            if not _still_claimed(item, job):
                raise Superseded("a newer Nucleus Analysis of this item claimed it meanwhile")
            summary = _swap(item, job, staged, files, summary)
            total_s = time.perf_counter() - started
    except BaseException as e:
        _remove_annotations(staged)
        # only this job's own uploads: a request naming any other file of the item (the
        # slide, a colleague's table) never deletes it
        _remove_files([f for f in files if _is_pending(f, job_id)])
        if job is not None and not isinstance(e, Superseded):
            _release(item, job)
        if isinstance(e, ValidationException):
            raise RestException(f"Nucleus Analysis results rejected: {e}") from e
        if isinstance(e, Superseded):
            raise RestException(f"Nucleus Analysis results discarded: {e}", 409) from e
        if isinstance(e, RestException):
            raise
        if isinstance(e, Exception):
            logger.exception("Nucleus Analysis: ingest of job %s failed", job_id)
            raise RestException(f"Nucleus Analysis ingest failed ({type(e).__name__}); the "
                                "previous result is unchanged.", 500) from e
        raise
    logger.info("Nucleus Analysis: job %s posted %d nuclei on item %s (read, validated and "
                "staged in %.1f s, %.1f s in all)", job_id, summary["nuclei"], item["_id"],
                staged_s, total_s)
    return summary


def _statistics(value) -> dict:
    """The CLI's per-class statistics, kept only as a JSON-sized dict of numbers (keys
    without dots, which Girder's metadata refuses: ``Size.Area`` -> ``Size_Area``)."""
    if not isinstance(value, dict):
        return {}
    out = {}
    for group, stats in list(value.items())[:64]:
        if isinstance(group, str) and isinstance(stats, dict):
            out[group[:100].replace(".", "_").lstrip("$")] = {
                k[:100].replace(".", "_").lstrip("$"): v for k, v in stats.items()
                if isinstance(k, str) and (
                isinstance(v, (int, float)) or (isinstance(v, dict) and all(
                    isinstance(x, (int, float)) for x in v.values())))}
    return out


def _swap(item: dict, job: dict, staged: list[dict], files: list[dict], summary: dict) -> dict:
    """Make the staged result the item's result; remove the previous one (not edits)."""
    item = Item().load(item["_id"], force=True)
    old_file_ids = _previous_files(item)
    new_ids = [a["_id"] for a in staged]
    # the new result is named first: a failure below leaves a consistent metadata record
    tables = []
    for file in files[1:]:
        file["name"] = file["name"].rsplit(PENDING, 1)[0]
        tables.append(file)
    summary["files"] = [{"_id": str(f["_id"]), "name": f["name"], "size": f["size"]}
                        for f in tables]
    Annotation().update({"_id": {"$in": new_ids}}, {"$set": {"itemId": item["_id"]}})
    for annotation in staged:
        Notification().createNotification(
            type="large_image_annotation.create",
            data={"_id": annotation["_id"], "itemId": item["_id"]},
            user=User().load(annotation["creatorId"], force=True),
            expires=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1))
    kept = _retire_previous(item, set(new_ids))
    if kept:
        summary["keptEditedAnnotationIds"] = kept
    for file_id in old_file_ids - {f["_id"] for f in tables}:
        old = File().load(file_id, force=True)
        if old is not None and str(old["itemId"]) == str(item["_id"]):
            File().remove(old)
    for file in tables:
        File().updateFile(file)
    File().remove(files[0])
    Item().collection.update_one({"_id": item["_id"]}, {"$set": {
        f"{STATE_FIELD}.current": {"jobId": summary["jobId"], "order": _order(job),
                                   "files": [f["_id"] for f in tables]}}})
    Item().setMetadata(Item().load(item["_id"], force=True), {META_KEY: summary})
    return summary


def _previous_files(item: dict) -> set:
    """Ids of the previous result's table files, from the private state field.

    Never from ``item.meta`` alone (anyone with write access edits it): a result recorded
    before the state field existed is trusted only for files named ``*-nuclei.csv`` or
    ``*-nuclei.parquet``.
    """
    state = item.get(STATE_FIELD, {}).get("current")
    if state is not None:
        return set(state.get("files", []))
    legacy = (item.get("meta") or {}).get(META_KEY) or {}
    found = set()
    for entry in legacy.get("files", []) if isinstance(legacy, dict) else []:
        try:
            file = File().load(entry.get("_id"), force=True)
        except Exception:  # a malformed id
            continue
        if file is not None and file["name"].endswith(("-nuclei.csv", "-nuclei.parquet")):
            found.add(file["_id"])
    return found


def _retire_previous(item: dict, keep: set) -> list[str]:
    """Remove the item's earlier results of this analysis; keep (and mark) edited ones."""
    kept = []
    for old in Annotation().find({"itemId": item["_id"], "_active": {"$ne": False},
                                  f"annotation.attributes.{ATTR_KEY}": {"$exists": True}}):
        if old["_id"] in keep:
            continue
        if old.get("updated") and old.get("created") and old["updated"] != old["created"]:
            marker = old["annotation"]["attributes"][ATTR_KEY]
            Annotation().update({"_id": old["_id"]}, {
                "$set": {f"annotation.attributes.{KEPT_KEY}": marker,
                         "annotation.name": f"{old['annotation'].get('name', 'Nuclei')} "
                                            "(edited, kept)"},
                "$unset": {f"annotation.attributes.{ATTR_KEY}": ""}})
            kept.append(str(old["_id"]))
        else:
            Annotation().remove(old)
    return kept


def _summarise(job: dict, staged: list[StagedClass], created: list[dict], tables: list[dict],
               header: dict) -> dict:
    attributes = header.get("attributes") if isinstance(header.get("attributes"), dict) else {}
    model = attributes.get("model") if isinstance(attributes.get("model"), dict) else {}
    classes = [{"name": c.name, "count": c.count, "color": c.color,
                "annotationId": str(c.annotation["_id"]),
                **({"densityAnnotationId": c.density_id} if c.density_id else {})}
               for c in staged if c.name]
    return {
        "model": model.get("name"), "modelVersion": model.get("version"),
        "classScope": str(model.get("class_scope") or "")[:500],
        # per class: count, mean/std/min/max of area, circularity, eccentricity, intensity
        # and class probability (what the CLI measured), for comparing folders of slides
        "statistics": _statistics(attributes.get("statistics")),
        "jobId": str(job["_id"]),
        "parameters": job.get(ATTR_KEY, {}).get("parameters", {}),
        "nuclei": sum(c["count"] for c in classes), "classes": classes,
        # above this many nuclei in view the Nuclei panel draws the density annotations
        "detailLimit": DETAIL_LIMIT,
        "annotationIds": [str(a["_id"]) for a in created],
        "files": [{"_id": str(f["_id"]), "name": f["name"], "size": f["size"]} for f in tables],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
