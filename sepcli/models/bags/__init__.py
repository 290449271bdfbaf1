"""Bags of models: the ``ensemble`` family (members blended per stem inside one
archive) and ``blend`` (building such an archive from existing ones)."""
