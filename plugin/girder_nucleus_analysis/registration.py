"""Register the CLI as slicer_cli_web task items, without Docker.

slicer_cli_web lists a CLI when an item with ``meta.slicerCLIType == 'task'`` and ``meta.xml``
sits in a tag folder (``meta.slicerCLIType == 'tag'``) inside an image folder
(``meta.slicerCLIType == 'image'``); HistomicsUI's Analyses menu shows what
``GET slicer_cli_web/docker_image`` returns. slicer_cli_web fills these from ``docker run IMAGE
--list_cli`` and ``docker run IMAGE <cli> --xml``; we ask the same two questions of the
CLI entry point installed next to Girder (``python -m slicer_cli``), then reuse slicer_cli_web's
own item sync so the items are exactly what it would have written.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from girder import logger
from girder.api.rest import RestException
from girder.constants import AccessType
from girder.models.collection import Collection
from girder.models.folder import Folder
from girder.models.setting import Setting
from girder.models.user import User

from .constants import ATTR_KEY, IMAGE_NAME, IMAGE_TAG, TASK_FOLDER_SETTING, PluginSettings

#: the DSA's default place for CLI images (collection, folder), as its provisioning creates
TASKS_COLLECTION = "Tasks"
TASKS_FOLDER = "Slicer CLI Web Tasks"

_state: dict = {"resource": None, "registered": False}


class RegistrationError(Exception):
    """The CLI could not be described (``--list_cli`` / ``--xml`` failed)."""


def cli_command() -> list[str]:
    """Command prefix that runs the slicer CLI entry point (``NUCLEUS_ANALYSIS_CLI`` overrides).

    Returns
    -------
    list of str
        e.g. ``[sys.executable, "-m", "slicer_cli"]``.
    """
    override = os.environ.get("NUCLEUS_ANALYSIS_CLI", "").strip()
    return shlex.split(override) if override else [sys.executable, "-m", "slicer_cli"]


def _ask(args: list[str]) -> str:
    cmd = cli_command() + args
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistrationError(f"cannot run {shlex.join(cmd)}: {e}") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RegistrationError(f"{shlex.join(cmd)} exited {done.returncode}: {last}")
    return done.stdout


def describe_clis() -> dict[str, dict]:
    """Ask the CLI entry point for its CLIs and their XML, as slicer_cli_web asks an image.

    Returns
    -------
    dict
        ``{cli name: {"type": ..., "xml": ...}}``.

    Raises
    ------
    RegistrationError
        When the entry point cannot be run or prints no usable list.
    """
    try:
        listing = json.loads(_ask(["--list_cli"]))
    except json.JSONDecodeError as e:
        raise RegistrationError(f"--list_cli did not print JSON: {e}") from e
    if not isinstance(listing, dict) or not listing:
        raise RegistrationError("--list_cli printed no CLI")
    return {name: {"type": desc.get("type", "python"), "xml": _ask([name, "--xml"])}
            for name, desc in listing.items()}


def task_folder(user: dict) -> dict:
    """The folder CLI images live in: slicer_cli_web's setting, else the DSA default.

    Creates the public collection ``Tasks`` / folder ``Slicer CLI Web Tasks`` (what the DSA
    provisioning creates) and points ``slicer_cli_web.task_folder`` at it when unset.
    """
    folder_id = Setting().get(TASK_FOLDER_SETTING)
    folder = Folder().load(folder_id, force=True) if folder_id else None
    if folder is None:
        collection = Collection().createCollection(
            TASKS_COLLECTION, creator=user, public=True, reuseExisting=True)
        folder = Folder().createFolder(collection, TASKS_FOLDER, parentType="collection",
                                       public=True, creator=user, reuseExisting=True)
        Setting().set(TASK_FOLDER_SETTING, str(folder["_id"]))
    return folder


def register(user: dict, base_folder: dict | None = None) -> list:
    """Create or refresh the image/tag folders and CLI items.

    The caller routes their runs to our job (``event_handlers.intercept``).

    Parameters
    ----------
    user : dict
        An admin user (owner of the created folders and items).
    base_folder : dict, optional
        Folder to register in; default :func:`task_folder`.

    Returns
    -------
    list of slicer_cli_web.models.CLIItem
        The registered CLI items.
    """
    from slicer_cli_web.models import CLIItem, DockerImageItem

    clis = describe_clis()
    base = base_folder or task_folder(user)
    image = Folder().createFolder(base, IMAGE_NAME, "Nucleus analysis CLIs (run as local "
                                  "processes by girder_worker)", creator=user,
                                  reuseExisting=True)
    Folder().setMetadata(image, {"slicerCLIType": "image"})
    tag = Folder().createFolder(image, IMAGE_TAG, "CLIs run by the nucleus_analysis plugin",
                                creator=user, reuseExisting=True)
    Folder().setMetadata(tag, {"slicerCLIType": "tag", ATTR_KEY: {"runner": "local"}})
    DockerImageItem._syncItems(DockerImageItem(image, tag, user), clis, user)
    items = [CLIItem(item) for item in Folder().childItems(
        tag, filters={"meta.slicerCLIType": "task"})]
    resource = _state["resource"]
    if resource is not None:  # regenerate slicer_cli_web's run routes for the new items
        resource.deleteImageEndpoints()
        resource._generateAllItemEndPoints()
    _state["registered"] = True
    logger.info("Nucleus Analysis: registered %s in folder %s",
                ", ".join(i.name for i in items), base["_id"])
    return items


def describe(items: list) -> list[dict]:
    """What the REST routes show of CLI items."""
    return [{"_id": str(i._id), "name": i.name, "image": i.image,
             "run": f"/slicer_cli_web/cli/{i._id}/run",
             "xmlspec": f"/slicer_cli_web/cli/{i._id}/xml"} for i in items]


def is_registered() -> bool:
    """Whether this process registered the CLI (or found it registered)."""
    return bool(_state["registered"])


def registered_items(user: dict | None = None) -> list:
    """slicer_cli_web ``CLIItem`` objects of our local image (readable by ``user``)."""
    from slicer_cli_web.models import CLIItem

    query = {"meta.slicerCLIType": "task", "meta.image": f"{IMAGE_NAME}:{IMAGE_TAG}"}
    from girder.models.item import Item

    if user is None:
        found = Item().find(query)
    else:
        found = Item().findWithPermissions(query, user=user, level=AccessType.READ)
    return [CLIItem(item) for item in found]


def cli_item(user: dict):
    """The registered CLI item ``user`` can read.

    Raises
    ------
    RestException
        503 when the CLI is not registered (yet).
    """
    items = registered_items(user)
    if not items:
        raise RestException("The Nucleus Analysis CLI is not registered; an admin can "
                            "PUT /nucleus_analysis/register.", 503)
    return items[0]


def attach(resource) -> list:
    """Remember slicer_cli_web's resource; return the already registered items."""
    _state["resource"] = resource
    items = registered_items()
    if items:
        _state["registered"] = True
    return items


def register_at_startup() -> list:
    """Register with the first admin when ``nucleus_analysis.auto_register`` is on.

    Returns
    -------
    list
        The registered CLI items (empty when there is no admin yet or registration is off).
    """
    if not Setting().get(PluginSettings.AUTO_REGISTER):
        return []
    admin = User().findOne({"admin": True})
    if admin is None:
        logger.info("Nucleus Analysis: no admin user yet; registering when one is created")
        return []
    return register(admin)
