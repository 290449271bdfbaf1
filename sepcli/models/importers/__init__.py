"""Importers of other projects' checkpoints (Demucs, MSST/UVR, Open-Unmix) into
sepcli archives."""
