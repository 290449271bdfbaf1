"""Model families, their configs, and the archive format."""

from sepcli.models.archive import (
    Archive,
    ArchiveMetadata,
    StftParams,
    load_archive,
    read_metadata,
    save_archive,
)

__all__ = ["Archive", "ArchiveMetadata", "StftParams", "load_archive", "read_metadata", "save_archive"]
