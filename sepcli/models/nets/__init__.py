"""The families' networks, one module per family (rows of
:data:`sepcli.models.families.FAMILY_TABLE` name them), plus the parts two
families share (:mod:`.roformer`, :mod:`.blocks`)."""
