"""Model bundles: one safetensors weights file plus a JSON model card, in one folder.

The card (model.json) holds the format version, the networks (kind + constructor config), the
methods the bundle can run and which networks each uses, the bands, the scale range, the input
normalisation, where the training data came from, and the SHA-256 of the weights file; engine.card
parses, checks and defaults it once (``read_card``), and everything else reads its typed fields. Weight
names are ``<network>.<parameter>``. The checksum is verified before anything is parsed, and the
weights are read with safetensors only (never pickle, never torch.load).

Every file the card names (the weights, the ONNX graphs, the stage-1 encoder) is a relative path that
stays inside the bundle folder (``member``: no absolute path, no ``..``, no symlink leading out), and
is read as a regular file of bounded size (``read_member``): nothing outside the folder is ever read,
written or removed on a card's word.

Bundles are looked up by name in resources/models/<name>/ (resources/ beside engine/), or given
as a folder path. Without either, the bundle named by the environment variable LATENTSR_MODEL is used,
else latentsr-rgb.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

from .card import FORMAT, VERSION, WEIGHTS, Card, Network, parse
from .errors import LatentSRError

CARD = "model.json"
DEFAULT_MODEL = "latentsr-rgb"
MODEL_ENV = "LATENTSR_MODEL"
MODELS_DIR = Path(__file__).resolve().parent.parent / "resources" / "models"
# Size bounds of the files of a bundle (the shipped model: a 20 kB card, 9 MB of weights, 10-100 kB graphs)
CARD_LIMIT = 16 << 20
WEIGHTS_LIMIT = 2 << 30
GRAPH_LIMIT = 256 << 20
HEADER_LIMIT = 100_000_000  # the safetensors header's declared length (the safetensors library's own bound)
# a FIFO must not hang the open; a symlink in a temporary file's place is not followed (POSIX only)
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def resolve(ref: str | os.PathLike | None) -> Path:
    """The folder of a bundle given by name (under resources/models) or by path; None means the
    environment variable LATENTSR_MODEL (a name or a path) when it is set, else the default model."""
    ref = (os.environ.get(MODEL_ENV) or DEFAULT_MODEL) if ref is None else str(ref)
    path = Path(ref).expanduser()
    if os.sep in ref or (os.altsep and os.altsep in ref) or path.is_dir():
        if not (path / CARD).is_file():
            raise LatentSRError(f"no model found in '{ref}': the folder needs {CARD} and {WEIGHTS}")
        return path
    path = MODELS_DIR / ref
    if not (path / CARD).is_file():
        raise LatentSRError(f"no bundled model '{ref}' found in resources/models: train one with `make train` "
                            f"or pass a model folder")
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member(folder: Path, name, field: str) -> Path:
    """The path of the file ``name`` of the bundle in ``folder``, which its card names in ``field``: a
    relative path that stays inside the folder, also once symlinks are followed; a LatentSRError
    naming the card and the field otherwise. Every reader and writer of a bundle's files goes through it."""
    where = f"'{field}' in the model card {Path(folder) / CARD}"
    if not isinstance(name, str) or not name or "\0" in name:
        raise LatentSRError(f"{where} must be a file name inside the model folder, got {name!r}")
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise LatentSRError(f"{where} is {name!r}: a model file must lie inside the model folder "
                            f"(no absolute path, no '..')")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise LatentSRError(f"{where} is {name!r}, which leads outside the model folder {folder} (a symlink?): "
                            f"a model file must lie inside it")
    return root / name


def read_member(folder: Path, name: str, field: str, what: str, limit: int, hint: str = "") -> bytes:
    """The bytes of the bundle file ``name`` (``member``), which must be a regular file of at most
    ``limit`` bytes; ``what`` names it in messages, ``hint`` says what to do."""
    path = member(folder, name, field)
    hint = f": {hint}" if hint else ""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as e:
        raise LatentSRError(f"cannot read the {what} {path}: {e.strerror}{hint}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LatentSRError(f"the {what} {path} is not a regular file{hint}")
        if info.st_size > limit:
            raise LatentSRError(f"the {what} {path} has {info.st_size} bytes, more than the {limit >> 20} MiB "
                                f"a model file may have{hint}")
        try:
            data = f.read(info.st_size + 1)
        except OSError as e:
            raise LatentSRError(f"cannot read the {what} {path}: {e.strerror}{hint}") from None
    if len(data) != info.st_size:
        raise LatentSRError(f"the {what} {path} changed while it was read{hint}")
    return data


def parse_json(text, what: str):
    """JSON text as Python values; a LatentSRError naming ``what`` for bad JSON or JSON nested too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise LatentSRError(f"cannot read {what}: it is nested too deeply") from None
    except ValueError as e:
        raise LatentSRError(f"cannot read {what}: {e}") from None


def read_card(folder: Path) -> Card:
    """The bundle's card (engine.card: parsed, checked and defaulted), every file it names a member of the folder."""
    data = read_member(folder, CARD, "card", "model card", CARD_LIMIT)
    path = Path(folder) / CARD
    raw = parse_json(data.decode("utf-8", errors="replace"), f"the model card {path}")
    card = parse(raw, path)
    for field, name in card.files():
        member(folder, name, field)
    return card


def load(ref: str | os.PathLike | None) -> tuple[Card, dict]:
    """(card, {name: torch tensor}) of a bundle, after checking the weights' SHA-256."""
    folder = resolve(ref)
    card = read_card(folder)
    return card, load_tensors(folder, card)


def load_tensors(folder: Path, card: Card) -> dict:
    """{name: torch tensor} of the bundle in ``folder`` whose card is ``card`` (read_card), after
    checking the weights' SHA-256 and each network's shapes."""
    from safetensors.torch import load as load_safetensors

    data = read_weights(folder, WEIGHTS, "weights.file", card.weights.sha256)
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise LatentSRError(f"cannot read the model weights {folder / WEIGHTS}: {e}") from None
    for name, spec in card.networks.items():
        check_shapes(name, spec, tensors, folder / CARD)
    return tensors


def read_weights(folder: Path, name: str, field: str, expected: str | None, what: str = "model weights",
                 hint: str = "") -> bytes:
    """The bytes of a safetensors file of the bundle (``read_member``, at most WEIGHTS_LIMIT bytes)
    whose header is sound (safetensors_index) and whose SHA-256 is ``expected``."""
    data = read_member(folder, name, field, what, WEIGHTS_LIMIT, hint)
    path = folder / name
    if sha256(data) != expected:
        verb = "do" if what.endswith("weights") else "does"
        raise LatentSRError(f"the {what} {path} {verb} not match the SHA-256 in the model card: "
                            f"the file is damaged or was changed{': ' + hint if hint else ''}")
    safetensors_index(data, f"the {what} {path}")
    return data


def save(folder: str | os.PathLike, card: Card, tensors: dict) -> Path:
    """Write ``tensors`` (name -> torch tensor) and ``card`` (its format and checksum filled in) to ``folder``."""
    from safetensors.torch import save as save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    card = card.updated(format=FORMAT, version=VERSION, weights={"file": WEIGHTS, "sha256": sha256(data)})
    write_member(folder, WEIGHTS, "weights.file", data)
    write_card(folder, card)
    return folder


def write_card(folder: Path, card: Card) -> None:
    """Write ``card`` as the bundle's model.json (replaced at once, never half-written)."""
    write_member(folder, CARD, "card", (json.dumps(card.to_json(), indent=2) + "\n").encode("utf-8"))


def write_member(folder: Path, name: str, field: str, data: bytes) -> Path:
    """Write ``data`` as the bundle file ``name`` (``member``: inside the folder), replaced at once
    through a temporary file made anew beside it: a stale one, or a symlink in its place, is removed,
    never followed, and an interrupted write leaves none."""
    path = member(folder, name, field)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            fd = os.open(tmp, CREATE_FLAGS, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise LatentSRError(f"cannot write the model file {path}: {e.strerror}") from None
    return path


DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_index(data: bytes, what: str = "the model weights") -> dict[str, tuple[str, list[int], int, int]]:
    """name -> (dtype, shape, absolute offset, length in bytes) of each tensor in a safetensors file;
    a LatentSRError naming ``what`` unless the header's declared length is bounded and within the
    file, and every tensor's extent matches its dtype and shape and lies within the data, which
    ends where the file ends."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > min(HEADER_LIMIT, len(data) - 8):
        raise LatentSRError(f"cannot read {what}: its header declares {size} bytes, the file has {len(data)}")
    header = parse_json(data[8:8 + size], what)
    index, end = {}, 0
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(v) for v in info["data_offsets"])
            shape = [int(n) for n in info["shape"]]
            if info["dtype"] not in DTYPE_SIZES or min(shape, default=0) < 0 or not 0 <= start <= stop \
                    or stop - start != math.prod(shape) * DTYPE_SIZES[info["dtype"]]:
                raise ValueError(f"the extent of {name} does not fit its dtype and shape")
            index[name] = (info["dtype"], shape, 8 + size + start, stop - start)
            end = max(end, stop)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise LatentSRError(f"cannot read {what}: its header is not valid ({e})") from None
    if 8 + size + end != len(data):
        raise LatentSRError(f"cannot read {what}: its header describes {8 + size + end} bytes, the file has {len(data)}")
    return index


def network_tensors(tensors: dict, network: str) -> dict:
    """The state dict of one network out of a bundle's tensors."""
    prefix = network + "."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def build_networks(card: Card, tensors: dict, names, device) -> dict:
    """The named networks of a bundle, built from the card and loaded with their weights."""
    from .models import build

    nets = {}
    for name in names:
        spec = card.network(name)
        net = build(spec.kind, spec.config)
        try:
            net.load_state_dict(network_tensors(tensors, name), strict=True)
        except RuntimeError as e:
            raise LatentSRError(f"the weights of network '{name}' do not fit its configuration: "
                                f"{str(e).splitlines()[0]}") from None
        nets[name] = net.to(device).eval()
    return nets


def layout(kind: str, config: dict) -> dict[str, tuple]:
    """name -> shape of the parameters and buffers of a ``kind`` network with ``config``, laid out on
    torch's meta device: nothing is allocated."""
    import torch

    from .models import build

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build(kind, config).state_dict().items()}


def check_shapes(name: str, spec: Network, tensors: dict, card_path: Path, entry: str | None = None) -> None:
    """A LatentSRError naming the card, the network and its config field unless the parameters that
    the card's config of network ``name`` gives have the shapes of the weights (the safetensors
    header's): the layout is made on the meta device, so no network is built before they agree. ``entry``
    is where the card holds the network (``networks.<name>`` unless given: the stage-1 encoder's is
    ``encoder``)."""
    entry = entry or f"networks.{name}"
    try:
        want = layout(spec.kind, spec.config)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        raise LatentSRError(f"'{entry}.config' in the model card {card_path} is not valid: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    have = {k: tuple(v.shape) for k, v in network_tensors(tensors, name).items()}
    if want == have:
        return
    field = config_field(spec, have)
    if set(want) != set(have):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        detail = (f"the card's config gives {len(want)} parameters, the weights hold {len(have)} "
                  f"({'no ' + name + '.' + missing[0] if missing else 'an unexpected ' + name + '.' + extra[0]})")
    else:
        key = next(k for k in want if want[k] != have[k])
        detail = f"{name}.{key} has shape {list(have[key])} there, the card's config gives {list(want[key])}"
    raise LatentSRError(f"the weights in {card_path.parent / WEIGHTS} do not fit '{entry}.config"
                        f"{'.' + field if field else ''}' in the model card {card_path}: {detail}")


def config_field(spec: Network, have: dict) -> str | None:
    """The config field of a network whose change alone, to a size found in the weights' shapes
    ``have``, makes the layout fit them; None when there is no such single field."""
    sizes = sorted({d for shape in have.values() for d in shape})
    config = spec.config
    for key, value in config.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            trials = [d for d in sizes if d != value]
        elif isinstance(value, list):
            trials = [value[:i] + [d] + value[i + 1:] for i in range(len(value)) for d in sizes if d != value[i]]
        else:
            continue
        for trial in trials:
            try:
                if layout(spec.kind, dict(config, **{key: trial})) == have:
                    return key
            except (TypeError, ValueError, RuntimeError, ZeroDivisionError):
                continue
    return None
