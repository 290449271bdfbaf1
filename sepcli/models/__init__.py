"""Model families, their configs, and the archive format."""

from sepcli.models.archive import (
    Archive,
    ArchiveMetadata,
    StftParams,
    load_archive,
    read_metadata,
    save_archive,
)
from sepcli.models.build import (
    FAMILIES,
    build_model,
    export_archive,
    load_verified,
    make_metadata,
    verify_archive,
)
from sepcli.models.configs import (
    EnsembleConfig,
    EnsembleMember,
    TFCTDFConfig,
    UMXConfig,
    WaveformConfig,
    config_from_dict,
    reference_config,
)
from sepcli.models.families import FAMILY_TABLE, Family, family

__all__ = [
    "Archive",
    "ArchiveMetadata",
    "StftParams",
    "load_archive",
    "read_metadata",
    "save_archive",
    "FAMILIES",
    "FAMILY_TABLE",
    "Family",
    "family",
    "build_model",
    "export_archive",
    "load_verified",
    "make_metadata",
    "verify_archive",
    "UMXConfig",
    "TFCTDFConfig",
    "WaveformConfig",
    "EnsembleConfig",
    "EnsembleMember",
    "config_from_dict",
    "reference_config",
]
