"""Setting validators and defaults of the plugin."""
from __future__ import annotations

from girder.exceptions import ValidationException
from girder.settings import SettingDefault
from girder.utility import setting_utilities

from .constants import PluginSettings

SettingDefault.defaults.update({PluginSettings.AUTO_REGISTER: True})


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
