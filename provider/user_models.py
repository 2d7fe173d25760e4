"""The models the dock offers: the bundled ones (resources/models) and those the user trained with
``latentsr:train`` (remembered in the QGIS settings), each a folder with a readable model card."""
from __future__ import annotations

import os

from qgis.core import QgsSettings

from ..engine import modelfile
from ..engine.errors import LatentSRError
from .i18n import tr

TRAINED = "latentsr/trained_models"


def trained() -> list[str]:
    """The folders ``latentsr:train`` wrote, newest first; those that are gone (deleted, or a temporary
    folder that went with an earlier QGIS session) are dropped from the settings too."""
    value = [str(v) for v in QgsSettings().value(TRAINED, [], type=list) if v]
    kept = [folder for folder in value if os.path.isdir(folder)]
    if kept != value:
        QgsSettings().setValue(TRAINED, kept)
    return kept


def register(folder: str) -> None:
    """Remember a folder that ``latentsr:train`` wrote, newest first."""
    folder = os.path.abspath(folder)
    QgsSettings().setValue(TRAINED, [folder] + [f for f in trained() if f != folder])


def card_name(folder: str) -> str | None:
    """The model's name from its card, or None when the folder holds no readable model."""
    try:
        return str(modelfile.read_card(modelfile.resolve(folder)).name or os.path.basename(folder))
    except LatentSRError:
        return None


def listed() -> list[tuple[str, str]]:
    """(label, folder) of every model to offer: "" is the default bundled model; then the other
    bundled models; then the trained ones that still exist."""
    out = [(tr("Bundled model ({name})").format(name=modelfile.DEFAULT_MODEL), "")]
    if modelfile.MODELS_DIR.is_dir():
        for child in sorted(modelfile.MODELS_DIR.iterdir()):
            if child.name != modelfile.DEFAULT_MODEL and card_name(str(child)):
                out.append((tr("Bundled: {name}").format(name=child.name), str(child)))
    for folder in trained():
        name = card_name(folder)
        if name:
            out.append((f"{name} ({folder})", folder))
    return out
