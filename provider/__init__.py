"""Processing provider of LatentSR (this folder is not called `processing`: that would shadow QGIS's own)."""
