"""LatentSR engine: tiled, georeferenced super-resolution of GDAL rasters. Never imports qgis."""
