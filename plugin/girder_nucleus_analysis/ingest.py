"""Server-side ingest of a finished job's outputs, synchronous so failures reach the job.

HistomicsUI's own ingest (``data.process`` on a background thread) only logs its errors while
the job says SUCCESS; here the worker calls ``POST nucleus_analysis/item/{id}/result`` and any
parse/validation error answers 400 with a readable message, which the worker turns into an
ERROR job. The annotation file arrived through Girder's chunked upload; its elements are
validated by large_image's schema and inserted in chunks by large_image's element model.

One annotation document per class is posted (``Nuclei: <class>``), so HistomicsUI can show
and hide classes natively; every element keeps ``group`` = class and ``user.id``.
"""
from __future__ import annotations

import datetime
import math

import jsonschema
import orjson
from girder import logger
from girder.api.rest import RestException
from girder.constants import AccessType
from girder.exceptions import ValidationException
from girder.models.file import File
from girder.models.item import Item
from girder_jobs.models.job import Job
from girder_large_image_annotation.models.annotation import Annotation

from .constants import ATTR_KEY, JOB_TYPE, META_KEY, STATUS_CANCELED, STATUS_CANCELING

#: what large_image itself reads into memory at most (its ``max_annotation_input_file_length``)
MAX_ANNOTATION_BYTES = 2 * 1024 ** 3


def _read_document(file: dict) -> dict:
    if file["size"] > MAX_ANNOTATION_BYTES:
        raise ValidationException(f"annotation file is {file['size']} bytes, more than "
                                  f"{MAX_ANNOTATION_BYTES}")
    chunks = []
    with File().open(file) as handle:
        while chunk := handle.read(16 * 1024 ** 2):
            chunks.append(chunk)
    try:
        doc = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as e:
        raise ValidationException(f"annotation file is not JSON: {e}") from e
    if isinstance(doc, dict) and "annotation" in doc:
        doc = doc["annotation"]
    if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
        raise ValidationException("annotation file must hold ONE annotation document "
                                  "(an object with an 'elements' list)")
    return doc


def _points_ok(points) -> bool:
    try:
        return len(points) >= 2 and all(
            len(p) == 3 and math.isfinite(p[0] + p[1] + p[2]) for p in points)
    except TypeError:
        return False


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


def _signature(element: dict) -> tuple:
    """What must match for two polylines to pass or fail large_image's schema alike."""
    user = element.get("user")
    user_sig = tuple(sorted((k, type(v).__name__) for k, v in user.items())) \
        if isinstance(user, dict) else type(user).__name__
    return (tuple(sorted(element)), element.get("type"), element.get("closed"),
            element.get("group"), element.get("lineColor"), element.get("lineWidth"),
            element.get("label") if isinstance(element.get("label"), str) else None, user_sig)


def validate_document(doc: dict) -> None:
    """Validate one annotation document against large_image's schema, fast for many nuclei.

    large_image validates every element with jsonschema unless consecutive elements look
    alike, and an integer ``user.id`` (our nucleus id) defeats its look-alike test: 12 ms per
    nucleus. Here each distinct polyline *signature* (keys, type, closed, group, colours,
    width, ``user`` keys and types) is validated once with large_image's own element schema,
    and every element's points are checked to be finite ``[x, y, z]`` triples (what the schema
    asks of them); elements of other types are validated one by one.

    Raises
    ------
    ValidationException
        Naming the first offending element.
    """
    model = Annotation()
    top = {k: v for k, v in doc.items() if k != "elements"}
    try:
        model.validatorAnnotation.validate({**top, "elements": []})
    except jsonschema.ValidationError as e:
        raise ValidationException(f"annotation: {_why(e)}") from e
    seen: set = set()
    ids = set()
    for index, element in enumerate(doc["elements"]):
        if not isinstance(element, dict):
            raise ValidationException(f"element {index} is not an object")
        if any(key.startswith("_") for key in element):
            raise ValidationException(f"element {index} has a key starting with '_'")
        if "id" in element:
            if element["id"] in ids:
                raise ValidationException(f"element {index}: duplicate id {element['id']}")
            ids.add(element["id"])
        polyline = element.get("type") == "polyline" and "id" not in element
        if polyline and not _points_ok(element.get("points")):
            raise ValidationException(f"element {index}: points must be two or more "
                                      "finite [x, y, z] triples")
        signature = _signature(element) if polyline else None
        if signature is None or signature not in seen:
            try:
                model.validatorAnnotationElement.validate(element)
            except jsonschema.ValidationError as e:
                raise ValidationException(f"element {index}: {_why(e)}") from e
            if signature is not None:
                seen.add(signature)


def _create(item: dict, user: dict, document: dict) -> dict:
    """large_image's ``createAnnotation``, saving without its per-element re-validation."""
    from girder.models.folder import Folder
    from girder.models.notification import Notification

    now = datetime.datetime.now(datetime.timezone.utc)
    doc = {"itemId": item["_id"], "creatorId": user["_id"], "created": now,
           "updatedId": user["_id"], "updated": now, "annotation": document}
    folder = Folder().load(item["folderId"], force=True)
    model = Annotation()
    model.copyAccessPolicies(src=folder, dest=doc, save=False)
    model.setPublic(doc, folder.get("public", False), save=False)
    model.setUserAccess(doc, user=user, level=AccessType.ADMIN, save=False)
    doc = model.save(doc, validate=False)
    Notification().createNotification(
        type="large_image_annotation.create", data={"_id": doc["_id"], "itemId": doc["itemId"]},
        user=user, expires=now + datetime.timedelta(seconds=1))
    return doc


def split_by_class(doc: dict, job_id: str) -> list[dict]:
    """One annotation document per element ``group`` (class), in first-seen class order.

    Parameters
    ----------
    doc : dict
        The CLI's annotation document.
    job_id : str
        Recorded in each document's ``attributes.nucleusAnalysis``.

    Returns
    -------
    list of dict
        Documents named ``"<name>: <class>"``; one document with no elements if none.
    """
    by_class: dict[str, list] = {}
    for element in doc["elements"]:
        group = element.get("group") if isinstance(element, dict) else None
        by_class.setdefault(group if isinstance(group, str) and group else "unclassified",
                            []).append(element)
    base = str(doc.get("name") or "Nuclei")
    attributes = dict(doc.get("attributes") or {})
    if not by_class:
        return [{**doc, "attributes": {**attributes, ATTR_KEY: {
            "jobId": job_id, "class": None, "count": 0}}}]
    out = []
    for name, elements in by_class.items():
        color = elements[0].get("lineColor") if isinstance(elements[0], dict) else None
        out.append({
            "name": f"{base}: {name}",
            "description": doc.get("description", ""),
            "attributes": {**attributes, ATTR_KEY: {
                "jobId": job_id, "class": name, "count": len(elements), "color": color}},
            "display": doc.get("display", {"visible": True}),
            "elements": elements,
        })
    return out


def _remove_files(files: list[dict]) -> None:
    for file in files:
        try:
            File().remove(file)
        except Exception:  # best effort: the request already failed for a named reason
            logger.exception("Nucleus Analysis: could not remove %s", file.get("_id"))


def _load_job(user: dict, item: dict, job_id: str) -> dict:
    job = Job().load(job_id, user=user, level=AccessType.READ, exc=True)
    if job.get("type") != JOB_TYPE or \
            str(job.get(ATTR_KEY, {}).get("itemId")) != str(item["_id"]):
        raise ValidationException(f"job {job_id} is not a Nucleus Analysis of this item")
    if job.get("status") in (STATUS_CANCELING, STATUS_CANCELED):
        raise ValidationException(f"job {job_id} was canceled; its outputs are discarded")
    return job


def ingest(user: dict, item: dict, job_id: str, annotation_file_id: str,
           table_file_ids: list[str]) -> dict:
    """Post a finished job's outputs onto ``item``, replacing this analysis' previous result.

    Parameters
    ----------
    user : dict
        The job's user (WRITE on ``item``, checked by the route).
    item : dict
        The slide item; the output files were uploaded into it.
    job_id : str
        The producing job (must be our job type, for this item, not canceled).
    annotation_file_id : str
        The uploaded ``.anot`` file (removed once ingested).
    table_file_ids : list of str
        The uploaded CSV / Parquet files (kept on the item).

    Returns
    -------
    dict
        The summary stored in ``item.meta.nucleusAnalysis``.

    Raises
    ------
    RestException
        400 with the reason when a file is missing or foreign, the job does not match, the
        annotation is not one valid document; the uploaded files are removed first.
    """
    files: list[dict] = []
    try:
        for file_id in [annotation_file_id, *table_file_ids]:
            file = File().load(file_id, user=user, level=AccessType.WRITE)
            if file is None or str(file["itemId"]) != str(item["_id"]):
                raise ValidationException(f"output file {file_id} is not in item {item['_id']}")
            files.append(file)
        job = _load_job(user, item, job_id)
        doc = _read_document(files[0])
        documents = split_by_class(doc, job_id)
        for document in documents:  # validate all before touching the previous result
            validate_document(document)
    except (ValidationException, orjson.JSONDecodeError) as e:
        _remove_files(files)
        raise RestException(f"Nucleus Analysis results rejected: {e}") from e
    created = []
    try:
        for document in documents:
            created.append(_create(item, user, document))
    except Exception as e:
        for annotation in created:
            Annotation().remove(annotation)
        _remove_files(files)
        raise RestException(f"Nucleus Analysis results rejected: {e}") from e
    summary = _summarise(job, documents, created, files[1:], doc)
    _replace_previous(item, created, summary)
    File().remove(files[0])
    item = Item().setMetadata(Item().load(item["_id"], force=True), {META_KEY: summary})
    logger.info("Nucleus Analysis: job %s posted %d nuclei on item %s", job_id,
                summary["nuclei"], item["_id"])
    return summary


def _summarise(job: dict, documents: list[dict], created: list[dict], tables: list[dict],
               doc: dict) -> dict:
    model = (doc.get("attributes") or {}).get("model") or {}
    classes = []
    for document, annotation in zip(documents, created, strict=True):
        info = document["attributes"][ATTR_KEY]
        if info["class"] is not None:
            classes.append({"name": info["class"], "count": info["count"],
                            "color": info.get("color"), "annotationId": str(annotation["_id"])})
    return {
        "model": model.get("name"), "modelVersion": model.get("version"),
        "jobId": str(job["_id"]),
        "parameters": job.get(ATTR_KEY, {}).get("parameters", {}),
        "nuclei": sum(c["count"] for c in classes), "classes": classes,
        "annotationIds": [str(a["_id"]) for a in created],
        "files": [{"_id": str(f["_id"]), "name": f["name"], "size": f["size"]} for f in tables],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def _replace_previous(item: dict, created: list[dict], summary: dict) -> None:
    keep = {a["_id"] for a in created}
    for old in Annotation().find({"itemId": item["_id"], "_active": {"$ne": False},
                                  f"annotation.attributes.{ATTR_KEY}": {"$exists": True}}):
        if old["_id"] not in keep:
            Annotation().remove(old)
    previous = item.get("meta", {}).get(META_KEY) or {}
    new_ids = {f["_id"] for f in summary["files"]}
    for entry in previous.get("files", []):
        old = File().load(entry.get("_id"), force=True) if entry.get("_id") not in new_ids \
            else None
        if old is not None and str(old["itemId"]) == str(item["_id"]):
            File().remove(old)
