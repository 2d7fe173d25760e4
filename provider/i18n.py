"""The plugin's user-visible words go through Qt's translation, QCoreApplication.translate, under one
context (CONTEXT): display names, parameter descriptions and help, widget labels and tooltips, error
and feedback messages. A text with values is translated as a template and formatted after, so that a
translation may move them: ``tr("Wrote {width}×{height} pixels").format(width=w, height=h)``. The
engine stays free of Qt: its own messages (LatentSRError, the log) reach the user as they are."""
from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

CONTEXT = "LatentSR"


def tr(text: str) -> str:
    """``text`` in the user's language, where the plugin has a translation for it; else as it is."""
    return QCoreApplication.translate(CONTEXT, text)
