"""Turn a request (our REST route or HistomicsUI's slicer_cli_web submit) into a worker job.

Validation happens here, at the boundary: the item must be readable and writable by the user,
parameters are checked against the CLI's own XML (types, constraints, enumerations) and then
by the engine's own option checks (:mod:`slicer_cli.nuclei.options`, pure Python), the slide's
declared size against the deployment's limit, and the job is refused with a readable 400/403
before anything is queued. Nothing a request says chooses a host, a port, a path or a model:
the Triton server, the dask scheduler and the model are the worker's deployment settings
(its environment), and a request naming them is refused.

What reaches the worker is plain strings (CLI flags) plus ids; the job's data token travels in
the celery message headers only (``girder_client_token``), never in the task's arguments, so
it is neither stored in the Girder job (``args``/``kwargs``) nor printed by girder_worker's
argument logging; see :mod:`.job_tokens` for its scope, life and revocation.
"""
from __future__ import annotations

import datetime
import json
import math

from girder import logger
from girder.api.rest import RestException
from girder.constants import AccessType
from girder.exceptions import FilePathException
from girder.models.file import File
from girder.models.item import Item
from girder.models.setting import Setting
from girder_jobs.models.job import Job

from . import job_tokens, settings
from .constants import ATTR_KEY, CLI_NAME, JOB_TYPE, PluginSettings

#: inputs and outputs are decided by the plugin (slide of the item, results onto the item)
_IO_TYPES = {"image", "file", "directory", "item", "geometry", "table", "transform"}
#: slicer_cli_web's own bookkeeping parameters that a HistomicsUI submit carries
_FRAMEWORK_SUFFIXES = ("_folder",)
#: names that choose an endpoint, a path or a model: deployment settings, never a request's
DEPLOYMENT_PARAMETERS = ("triton_url", "model_name", "model_dir", "scheduler",
                         "max_slide_px")
#: XML parameter name -> engine option name (``slicer_cli.nuclei.options.AnalysisOptions``)
_OPTION_NAMES = {"tile_size": "tile_size_px"}


def slide_file(item: dict, user: dict, file_id: str | None = None) -> dict:
    """The slide file to analyse: ``file_id`` (must belong to ``item``), else the large image.

    Raises
    ------
    RestException
        400 when the item has no single slide file or the file is not in the item.
    """
    if file_id:
        file = File().load(file_id, user=user, level=AccessType.READ, exc=True)
        if str(file["itemId"]) != str(item["_id"]):
            raise RestException(f"File {file_id} is not in item {item['_id']}.")
        return file
    large = item.get("largeImage", {}).get("fileId")
    if large:
        return File().load(large, force=True)
    files = list(Item().childFiles(item, limit=2))
    if len(files) != 1:
        raise RestException(f"Item {item['_id']} is not a large image and has {len(files)} "
                            "files; pass fileId to choose the slide.")
    return files[0]


def _truthy(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise RestException(f"Parameter {name} must be true or false, not {value!r}.")


def _number(name: str, value, kind: type, param) -> int | float:
    if isinstance(value, bool):
        raise RestException(f"Parameter {name} must be a number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise RestException(f"Parameter {name} must be a number, not {_short(value)}.") from e
    if not math.isfinite(number):
        raise RestException(f"Parameter {name} must be finite, not {_short(value)}.")
    if kind is int:
        if number != int(number):
            raise RestException(f"Parameter {name} must be an integer, not {_short(value)}.")
        number = int(number)
    constraints = getattr(param, "constraints", None)
    if constraints is not None:
        low, high = constraints.minimum, constraints.maximum
        if low is not None and number < float(low) or high is not None and number > float(high):
            raise RestException(f"Parameter {name} must be within [{low}, {high}], "
                                f"not {number}.")
    return number


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _region(name: str, value) -> list[float] | None:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except json.JSONDecodeError as e:
            raise RestException(f"Parameter {name} is not valid JSON: {e}") from e
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError) as e:
        raise RestException(f"Parameter {name} must be four numbers left,top,width,height.") \
            from e
    if len(numbers) != 4:
        raise RestException(f"Parameter {name} must be four numbers left,top,width,height.")
    if not all(math.isfinite(v) for v in numbers):
        raise RestException(f"Parameter {name} must be four finite numbers.")
    if all(v == -1 for v in numbers):
        return None
    if numbers[0] < 0 or numbers[1] < 0 or numbers[2] <= 0 or numbers[3] <= 0:
        raise RestException(f"Parameter {name}: left and top must be >= 0, width and height "
                            "> 0 (or all -1 for the whole slide).")
    return numbers


def cli_arguments(xml: bytes | str, params: dict, strict: bool = True) -> tuple[list[str], dict]:
    """Validate ``params`` against the CLI XML and turn them into ``--flag=value`` arguments.

    Parameters
    ----------
    xml : bytes or str
        The CLI's XML (``meta.xml`` of the registered item).
    params : dict
        ``{parameter name: value}``; absent or empty values keep the CLI's default.
    strict : bool
        Reject names the CLI does not have (our REST route). HistomicsUI's submit also carries
        its input/output bindings, which are ignored instead.

    Returns
    -------
    args : list of str
        CLI arguments, e.g. ``["--batch-size=4", "--region=0,0,512,512"]``.
    values : dict
        The normalised parameter values (recorded on the job and in the item metadata).

    Raises
    ------
    RestException
        400 on an unknown name (strict), a wrong type or a value outside the constraints.
    """
    from slicer_cli_web.cli_utils import as_model, get_cli_parameters

    model = as_model(xml.encode() if isinstance(xml, str) else xml)
    index_params, opt_params, _ = get_cli_parameters(model)
    known = {p.name: p for p in opt_params if p.typ not in _IO_TYPES and p.longflag}
    io_names = {p.name for p in index_params + opt_params if p.name not in known}
    chosen = sorted(k for k in params if k in DEPLOYMENT_PARAMETERS and k not in known and
                    params[k] not in (None, ""))
    if chosen:
        raise RestException(f"Parameter(s) {', '.join(chosen)} cannot be set by a job: the "
                            "inference server, scheduler and model are deployment settings "
                            "of the worker.")
    unknown = [k for k in params if k not in known and k not in DEPLOYMENT_PARAMETERS and (
        strict or (k not in io_names and not k.endswith(_FRAMEWORK_SUFFIXES)))]
    if unknown and strict:
        raise RestException(f"Unknown parameter(s) {', '.join(sorted(unknown))}; this CLI "
                            f"takes {', '.join(sorted(known))}.")
    args, values = [], {}
    for name, param in known.items():
        value = params.get(name)
        if value is None or (isinstance(value, str) and value.strip() == "" and
                             param.typ != "string"):
            continue
        if param.typ == "boolean":
            flag = _truthy(name, value)
            values[name] = flag
            args.append(f"{param.longflag}={'true' if flag else 'false'}")
        elif param.typ == "integer":
            values[name] = _number(name, value, int, param)
            args.append(f"{param.longflag}={values[name]}")
        elif param.typ in ("float", "double"):
            values[name] = _number(name, value, float, param)
            args.append(f"{param.longflag}={values[name]!r}")
        elif param.typ == "region":
            region = _region(name, value)
            if region is not None:
                values[name] = region
                args.append(f"{param.longflag}=" + ",".join(f"{v:g}" for v in region))
        elif param.typ == "string-enumeration":
            if str(value) not in param.elements:
                raise RestException(f"Parameter {name} must be one of "
                                    f"{', '.join(param.elements)}, not {value!r}.")
            values[name] = str(value)
            args.append(f"{param.longflag}={value}")
        else:
            text = str(value).strip()
            if "\n" in text:
                raise RestException(f"Parameter {name} must be a single line.")
            if text:
                values[name] = text
                args.append(f"{param.longflag}={text}")
    check_options(values)
    return args, values


def check_options(values: dict) -> None:
    """Run the engine's own option checks (finite, in range) on validated XML values.

    Raises
    ------
    RestException
        400 with the engine's message (e.g. ``--slide-mpp must be within [0.05, 5]``).
    """
    from slicer_cli.nuclei.errors import OptionsError
    from slicer_cli.nuclei.options import AnalysisOptions

    fields = set(AnalysisOptions.__dataclass_fields__)
    options = {_OPTION_NAMES.get(k, k): v for k, v in values.items()}
    try:
        AnalysisOptions(**{k: v for k, v in options.items() if k in fields})
    except OptionsError as e:
        raise RestException(f"Invalid parameter: {e}.") from e


def check_slide(item: dict, file: dict, values: dict) -> None:
    """Refuse a slide larger than ``nucleus_analysis.max_slide_pixels``, or a region off it.

    Only large_image items declare their size here; other slides are checked by the CLI.

    Raises
    ------
    RestException
        400 naming the slide's size and the limit, or the region and the slide's size.
    """
    large = item.get("largeImage") or {}
    if str(large.get("fileId")) != str(file["_id"]):
        return
    try:
        from girder_large_image.models.image_item import ImageItem

        meta = ImageItem().getMetadata(item)
        size_x, size_y = int(meta["sizeX"]), int(meta["sizeY"])
    except Exception as e:  # an unreadable slide is the CLI's to report, readably
        logger.info("Nucleus Analysis: no slide metadata for item %s: %s", item["_id"], e)
        return
    limit = settings.number(PluginSettings.MAX_SLIDE_PIXELS)
    if size_x * size_y > limit:
        raise RestException(f"The slide declares {size_x} x {size_y} pixels, more than this "
                            f"server's limit of {limit:.3g} ({PluginSettings.MAX_SLIDE_PIXELS})."
                            )
    region = values.get("region")
    if region is not None:
        left, top, width, height = region
        if left >= size_x or top >= size_y:
            raise RestException(f"Parameter region {region} lies outside the slide "
                                f"({size_x} x {size_y} pixels).")


def direct_path(file: dict) -> str | None:
    """Local path of the slide when ``worker.direct_path`` is on and the assetstore has one."""
    if not Setting().get("worker.direct_path"):
        return None
    try:
        return File().getLocalFilePath(file)
    except FilePathException:
        return None


def launch(user: dict, item: dict, file: dict, cli_item, params: dict,
           strict: bool = True) -> dict:
    """Queue the analysis of ``file`` (in ``item``) on girder_worker; return the job.

    Parameters
    ----------
    user : dict
        The requesting user (needs WRITE on ``item``; checked here again).
    item, file : dict
        The slide item and its slide file.
    cli_item : slicer_cli_web.models.CLIItem
        The registered CLI (its XML validates ``params``).
    params : dict
        CLI parameters by name.
    strict : bool
        See :func:`cli_arguments`.

    Raises
    ------
    RestException
        400 on bad parameters or a slide over the size limit; 503 when the job cannot be
        queued (its token is revoked at once).
    girder.exceptions.AccessException
        403 when the user cannot write to the item (results could not be posted).
    """
    from .worker import run_nucleus_analysis

    Item().requireAccess(item, user, AccessType.WRITE)
    args, values = cli_arguments(cli_item.xml, params, strict=strict)
    check_slide(item, file, values)
    limit_s = settings.number(PluginSettings.JOB_TIME_LIMIT_S)
    deadline = datetime.datetime.utcnow() + datetime.timedelta(seconds=limit_s)
    launch_id = job_tokens.new_launch_id()
    token = job_tokens.create(user, launch_id, deadline)
    deploy_args = [f"--max-slide-px={settings.number(PluginSettings.MAX_SLIDE_PIXELS):.17g}"]
    try:
        result = run_nucleus_analysis.delay(
            item_id=str(item["_id"]), file_id=str(file["_id"]), slide_name=file["name"],
            cli_name=cli_item.name or CLI_NAME, cli_args=args + deploy_args,
            direct_path=direct_path(file),
            deadline=deadline.replace(tzinfo=datetime.timezone.utc).timestamp(),
            girder_user=user, girder_client_token=token["_id"],
            girder_job_title=f"{cli_item.name or CLI_NAME} on {item['name']}",
            girder_job_type=JOB_TYPE,
            girder_job_other_fields={ATTR_KEY: {"itemId": str(item["_id"]),
                                                "fileId": str(file["_id"]),
                                                "parameters": values,
                                                "launch": launch_id}})
        job = Job().load(result.job["_id"], force=True)
    except Exception as e:
        job_tokens.revoke_launch(launch_id)
        logger.exception("Nucleus Analysis: could not queue the job")
        raise RestException(f"The job could not be queued ({type(e).__name__}); try again "
                            "later or ask an administrator to check the worker broker.",
                            503) from e
    # what slicer_cli_web's "rerun" reads back (never the deployment's own arguments)
    original = {k: v for k, v in params.items() if k not in DEPLOYMENT_PARAMETERS}
    original.setdefault("inputImageFile", str(file["_id"]))
    job = Job().updateJob(job, otherFields={
        "_original_params": original,
        "_original_name": cli_item.name, "_original_path": cli_item.restBasePath})
    return job
