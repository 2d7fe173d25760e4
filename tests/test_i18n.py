"""Every user-visible string of the plugin (provider/, ui/) goes through provider.i18n.tr, Qt's
translation: display names, parameter descriptions and help, widget labels and tooltips, error and
feedback messages."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the user-facing calls: the positions of the arguments that a user reads
ARGUMENTS = {
    "add": [1], "add_parameter": [1], "QgsProcessingException": [0],
    "pushInfo": [0], "reportError": [0], "pushWarning": [0], "pushCommandInfo": [0], "setProgressText": [0],
    "pushMessage": [0, 1], "QLabel": [0], "QPushButton": [0], "QCheckBox": [0], "QRadioButton": [0],
    "QgsCollapsibleGroupBox": [0], "QGroupBox": [0], "QAction": [0], "QToolButton": [0],
    "setToolTip": [0], "setText": [0], "setPlaceholderText": [0], "setDefaultText": [0], "setSpecialValueText": [0],
    "setWindowTitle": [0], "setTitle": [0], "setStatusTip": [0], "setFilter": [0], "setSuffix": [0], "setPrefix": [0],
    "addRow": [0], "addItem": [0], "_done": [1], "run_engine": [0],
}
RETURNS = ("displayName", "group", "longName", "help_paragraphs", "missing_message", "size_text", "connect_timeout")


def call_name(node: ast.Call) -> str:
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")


def bare(node) -> bool:
    """Whether ``node`` puts words on screen without tr(): a string literal (or f-string) with letters,
    also inside a concatenation, a tuple, a list or a conditional."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and any(c.isalpha() for c in node.value)
    if isinstance(node, ast.JoinedStr):
        return any(bare(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return bare(node.left) or bare(node.right)
    if isinstance(node, (ast.Tuple, ast.List)):
        return any(bare(e) for e in node.elts)
    if isinstance(node, ast.IfExp):
        return bare(node.body) or bare(node.orelse)
    return False


def untranslated(source: str, name: str = "<source>") -> list[str]:
    """``name:line`` of every user-visible string in ``source`` that does not go through tr()."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            called = call_name(node)
            places = [1] if called.startswith(("QgsProcessingParameter", "QgsProcessingOutput")) else ARGUMENTS.get(called, [])
            values = [node.args[i] for i in places if i < len(node.args)]
            values += [k.value for k in node.keywords if called == "pushMessage" and k.arg in ("title", "text")]
            found += [f"{name}:{v.lineno} {called}" for v in values if bare(v)]
        elif isinstance(node, ast.FunctionDef) and node.name in RETURNS:
            found += [f"{name}:{r.lineno} {node.name}" for r in ast.walk(node)
                      if isinstance(r, ast.Return) and r.value is not None and bare(r.value)]
        elif isinstance(node, ast.FunctionDef) and node.name == "set_tooltips":
            found += [f"{name}:{v.lineno} tooltip" for d in ast.walk(node) if isinstance(d, ast.Dict)
                      for v in d.values if bare(v)]
    return found


def test_the_plugin_passes_no_bare_string_to_the_user():
    """An AST scan of provider/ and ui/: no user-facing call (ARGUMENTS), display name, help text,
    tooltip or message builder (RETURNS) gets a string literal that skips tr()."""
    files = sorted((ROOT / "provider").glob("*.py")) + sorted((ROOT / "ui").glob("*.py"))
    assert len(files) > 10
    found = [hit for f in files for hit in untranslated(f.read_text(encoding="utf-8"), f.relative_to(ROOT).as_posix())]
    assert found == []


def test_the_scan_finds_a_bare_string():
    source = '''
class A:
    def displayName(self):
        return "Super-resolve"

    def build(self, feedback, n):
        QLabel(tr("Run"))
        QPushButton("Cancel")
        feedback.pushInfo(f"{n} tiles")
        feedback.pushInfo(tr("{n} tiles").format(n=n))
        self.install.setToolTip("Install " + NAME)
        add(QgsProcessingParameterNumber("SCALE", "Scale factor"), tr("Continuous scale"))
        raise QgsProcessingException(tr("bad"))
'''
    assert untranslated(source) == ["<source>:4 displayName", "<source>:8 QPushButton", "<source>:9 pushInfo",
                                    "<source>:11 setToolTip", "<source>:12 QgsProcessingParameterNumber"]


@pytest.fixture
def shouting(qgis_app):
    """A translator installed in the application that turns the plugin's context upper case (the
    placeholders of a template kept)."""
    from qgis.PyQt.QtCore import QCoreApplication, QTranslator

    from latentsr.provider.i18n import CONTEXT

    class Shouting(QTranslator):
        def translate(self, context, text, disambiguation=None, n=-1):
            if context != CONTEXT:
                return ""
            return "".join(part if part.startswith("{") else part.upper() for part in re.split(r"(\{[^{}]*\})", text))

        def isEmpty(self):  # noqa: N802 - Qt API
            return False

    translator = Shouting()
    QCoreApplication.installTranslator(translator)
    yield
    QCoreApplication.removeTranslator(translator)


def test_a_translation_reaches_the_algorithms(shouting):
    """With a translator installed, the algorithms' names, parameter descriptions and help come out
    translated (here: upper case)."""
    from latentsr.provider.superresolve import SuperResolveAlgorithm

    algorithm = SuperResolveAlgorithm()
    algorithm.initAlgorithm()
    assert algorithm.displayName() == "SUPER-RESOLVE RASTER"
    assert algorithm.group() == "SUPER-RESOLUTION"
    scale = algorithm.parameterDefinition("SCALE")
    assert scale.description() == "SCALE FACTOR"
    assert scale.help().startswith("CONTINUOUS SCALE")
    assert "AT MOST 4: " in algorithm.parameterDefinition("STEPS").help()  # a template, its value put in after


def test_every_algorithm_builds_under_a_translation(shouting):
    """Each algorithm's parameters and help build with a translator in place (every template's
    placeholders survive it): nothing of them is left untranslated."""
    from latentsr.provider.provider import LatentSRProvider

    provider = LatentSRProvider()
    assert provider.name() == "LATENTSR"
    provider.loadAlgorithms()
    algorithms = provider.algorithms()
    assert len(algorithms) == 3
    for algorithm in algorithms:
        help_text = algorithm.shortHelpString()
        assert algorithm.displayName().isupper() and help_text
        for parameter in algorithm.parameterDefinitions():
            assert not re.search("[a-z]", parameter.description()), parameter.description()
