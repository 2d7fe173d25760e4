"""LatentSR desktop UI: the dock, its background run and the dependency installer (no raster or model logic)."""
