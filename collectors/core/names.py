"""Names that end up in MQTT topics and Sparkplug ids."""

from typing import Annotated

from collectors.core.modelbase import Field

# No '/', '+', '#' (MQTT topic levels and wildcards) and no spaces: a name is one topic level.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
NAME_MAX = 64

Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        max_length=NAME_MAX,
        description="letters, digits and _ . : - (one MQTT topic level: no / + # or spaces)",
    ),
]
