"""The sepcli model archive: the file format (:mod:`.format`) and the attributes
every family module carries for it (:mod:`.contract`).

``from sepcli.models.archive import X`` names everything the format exports.
"""

from sepcli.models.archive.contract import PublishedChunks, set_contract
from sepcli.models.archive.format import *  # noqa: F403
from sepcli.models.archive.format import __all__ as _format_all

__all__ = [*_format_all, "set_contract", "PublishedChunks"]
