"""The sepcli model archive: the file format (:mod:`.format`) and the attributes
every family module carries for it (:mod:`.contract`).

``from sepcli.models.archive import X`` names everything the format exports.
"""

from sepcli.models.archive.contract import set_contract
from sepcli.models.archive.format import (
    ARCHIVE_FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    OUTPUT_KINDS,
    Archive,
    ArchiveMetadata,
    StftParams,
    check_integrity,
    check_module,
    count_parameters,
    load_archive,
    probe_archive,
    read_metadata,
    save_archive,
)

__all__ = [
    "ARCHIVE_FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "OUTPUT_KINDS",
    "StftParams",
    "ArchiveMetadata",
    "Archive",
    "save_archive",
    "load_archive",
    "read_metadata",
    "probe_archive",
    "count_parameters",
    "check_module",
    "check_integrity",
    "set_contract",
]
