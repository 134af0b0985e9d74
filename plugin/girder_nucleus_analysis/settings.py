"""Setting validators and defaults of the plugin (Girder settings: only an admin sets them)."""
from __future__ import annotations

import math

from girder.exceptions import ValidationException
from girder.models.setting import Setting
from girder.settings import SettingDefault
from girder.utility import setting_utilities

from .constants import SETTING_RANGES, PluginSettings

SettingDefault.defaults.update({PluginSettings.AUTO_REGISTER: True})
SettingDefault.defaults.update({key: default for key, (default, _, _) in SETTING_RANGES.items()})


@setting_utilities.validator({PluginSettings.AUTO_REGISTER})
def validate_auto_register(doc: dict) -> None:
    """``nucleus_analysis.auto_register`` must be a boolean.

    Raises
    ------
    ValidationException
        When the value is not true/false.
    """
    value = doc["value"]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        doc["value"] = value.lower() == "true"
    elif not isinstance(value, bool):
        raise ValidationException(f"{PluginSettings.AUTO_REGISTER} must be true or false.",
                                  "value")


@setting_utilities.validator(set(SETTING_RANGES))
def validate_number(doc: dict) -> None:
    """Numeric settings: finite numbers within their range (:data:`SETTING_RANGES`).

    Raises
    ------
    ValidationException
        When the value is not a number or is outside the range.
    """
    _, low, high = SETTING_RANGES[doc["key"]]
    try:
        value = float(doc["value"])
    except (TypeError, ValueError) as e:
        raise ValidationException(f"{doc['key']} must be a number.", "value") from e
    if not math.isfinite(value) or not low <= value <= high:
        raise ValidationException(f"{doc['key']} must be within [{low:g}, {high:g}].", "value")
    doc["value"] = value


def number(key: str) -> float:
    """The current value of a numeric setting (its default when unset)."""
    return float(Setting().get(key))
