"""LatentSR QGIS plugin."""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    from .plugin import LatentSRPlugin

    return LatentSRPlugin(iface)
