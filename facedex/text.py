"""Text that PostgreSQL can store: no NUL, no lone UTF-16 surrogates (asyncpg cannot encode them as UTF-8).

Checked at the edge, in the request models and query parameters, so such text is a 400 with code 10012
(``facedex.http`` maps this validator's error type to it) instead of a 500 from the database driver.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

NOT_STORABLE = "text_not_storable"  # the pydantic error type facedex.http turns into Errors.TEXT_NOT_STORABLE
_BAD = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    if _BAD.search(value):
        raise PydanticCustomError(NOT_STORABLE, "text contains NUL or an unpaired surrogate, which cannot be stored")
    return value


StoredText = Annotated[str, AfterValidator(storable)]
