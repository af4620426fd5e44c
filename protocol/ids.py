"""The shapes of identifiers that travel in topics, URL paths and file names."""

from typing import Annotated

from pydantic import Field

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ID_DESCRIPTION = "1-64 letters, digits, '-' or '_', starting with a letter or digit"

DeviceId = Annotated[str, Field(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
SessionId = Annotated[str, Field(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
