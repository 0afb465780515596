"""Load official YOLOv5 .pt files through a restricted unpickler, and our own checkpoints."""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import pickletools
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError

_MODEL_CLASSES = frozenset({"models.yolo.Model", "models.yolo.DetectionModel",
                            "models.yolo.SegmentationModel"})


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an official YOLOv5 .pt or a yolo-ray checkpoint → (float state_dict, metadata).

    Metadata: source ('yolov5' | 'yolo-ray'), nc, names, yaml (model dict or None), anchors
    ((nl, na, 2) tensor, grid units), plus plain values such as epoch, date, stride, hyp.
    Raises WeightsError for missing files, non-checkpoints and disallowed pickle globals.
    """
    p = Path(path)
    with _open_archive(p) as (zf, prefix):
        names = _pickle_globals(zf.read(f"{prefix}data.pkl"), p)
    for name in names:  # early, uniform refusal; the unpicklers below enforce it again
        if resolve_global(*name.rsplit(".", 1)) is None:
            raise WeightsError(f"{p}: refuses to load global {name!r} (not on the allow-list "
                               "of tensor, container and YOLOv5/torch.nn classes)")
    if any(n in YOLOV5_CLASSES for n in names):
        return load_official_state_dict(p)
    return _load_own(p)


def load_official_state_dict(path: str | Path, which: str = "model",
                             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Extract a float32 state_dict (YOLOv5 key names) and metadata from an official .pt.

    `which` picks ckpt['model'] (what YOLOv5's train.py transfers) or ckpt['ema']; the other
    is used when the chosen one is None (stripped checkpoints keep only 'model').
    """
    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema', got {which!r}")
    p = Path(path)
    ckpt = _restricted_load(p)
    if not isinstance(ckpt, dict) or not ({"model", "ema"} & set(ckpt)):
        raise WeightsError(f"{p}: not a YOLOv5 checkpoint (no 'model' entry)")
    other = "ema" if which == "model" else "model"
    root = ckpt.get(which) if ckpt.get(which) is not None else ckpt.get(other)
    if not isinstance(root, StandIn) or root.qualname not in _MODEL_CLASSES:
        raise WeightsError(f"{p}: checkpoint 'model' is not a YOLOv5 model object "
                           f"(got {getattr(root, 'qualname', type(root).__name__)})")
    sd = _module_state_dict(root, p)
    return {k: _as_float(v) for k, v in sd.items()}, _official_meta(root, ckpt, sd)


def transfer_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor],
                        exclude: Iterable[str] = ()) -> tuple[int, int]:
    """Copy the entries of `sd` whose name and shape exist in `model` (non-strict).

    Names containing any string in `exclude` (e.g. 'anchor') are skipped. Returns
    (transferred, len(model.state_dict())) for "Transferred X/Y items from FILE".
    """
    exclude = tuple(exclude)
    msd = model.state_dict()
    csd = {k: v for k, v in sd.items()
           if k in msd and v.shape == msd[k].shape and not any(x in k for x in exclude)}
    model.load_state_dict(csd, strict=False)
    return len(csd), len(msd)


# --- the allow-list: what a pickled global may resolve to ----------------------------------

class StandIn:
    """Inert record of a pickled object of an allow-listed class: keeps its state, runs nothing.

    One subclass per allowed class name sets `qualname`. __slots__ (no __dict__) means pickled
    state can never shadow a method such as __setstate__.
    """

    __slots__ = ("args", "state")
    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:  # noqa: PYI034 (py3.10: no Self)
        obj = super().__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # REDUCE calls cls(*args); __new__ already recorded them

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        self.state = state if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"<stand-in {self.qualname}>"


@dataclass(frozen=True)
class StorageType:
    """What a `torch.HalfStorage`-style global resolves to: only its dtype is used."""

    dtype: torch.dtype


@dataclass(frozen=True)
class StorageRef:
    """A storage read from the archive's data/ records, typed by its pickled storage type."""

    dtype: torch.dtype
    storage: torch.UntypedStorage


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any,
                    *_ignored: Any) -> torch.Tensor:
    """Stand-in for torch._utils._rebuild_tensor_v2 (ignored: grad flag, hooks, metadata)."""
    if not isinstance(storage, StorageRef):
        raise WeightsError(f"tensor rebuild got {type(storage).__name__}, not a storage")
    t = torch.empty(0, dtype=storage.dtype)
    return t.set_(storage.storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """nn.Parameter → its tensor (requires_grad and hooks do not matter for weights)."""
    if not isinstance(data, torch.Tensor):
        raise WeightsError(f"parameter rebuild got {type(data).__name__}, not a tensor")
    return data


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); nothing else is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise WeightsError(f"refuses _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_YOLOV5_MODULES = {
    "models.yolo": ("Model", "DetectionModel", "SegmentationModel", "Detect", "Segment"),
    "models.common": ("Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "C3x", "C3TR",
                      "C3SPP", "C3Ghost", "GhostConv", "GhostBottleneck", "SPP", "SPPF", "Focus",
                      "Concat", "Contract", "Expand", "Proto", "CrossConv"),
    "models.experimental": ("CrossConv", "MixConv2d", "Sum"),
}
_TORCH_NN = {
    "torch.nn.modules.container": ("Sequential", "ModuleList", "ModuleDict"),
    "torch.nn.modules.conv": ("Conv2d", "ConvTranspose2d"),
    "torch.nn.modules.batchnorm": ("BatchNorm2d",),
    "torch.nn.modules.activation": ("SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish",
                                    "Sigmoid", "Mish", "GELU"),
    "torch.nn.modules.linear": ("Identity", "Linear"),
    "torch.nn.modules.pooling": ("MaxPool2d", "AdaptiveAvgPool2d"),
    "torch.nn.modules.upsampling": ("Upsample",),
    "torch.nn.modules.dropout": ("Dropout",),
}
# Metadata types of unstripped checkpoints (numpy best_fitness, Path options): recorded as
# stand-ins, never constructed, and never passed on as metadata.
_OPAQUE = {
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy": ("ndarray", "dtype"),
    "pathlib": ("Path", "PosixPath", "WindowsPath"),
    "argparse": ("Namespace",),
}
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_DTYPE_NAMES = ("float16", "float32", "float64", "bfloat16", "int64", "int32", "int16", "int8",
                "uint8", "bool", "half", "float", "double", "long", "int")


def _allow_table() -> Mapping[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): _encode_latin1,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
    }
    table.update({("torch", n): getattr(torch, n) for n in _DTYPE_NAMES})
    table.update({("torch", n): StorageType(d) for n, d in _STORAGE_DTYPES.items()})
    for group in (_YOLOV5_MODULES, _TORCH_NN, _OPAQUE):
        for module, names in group.items():
            for n in names:
                attrs = {"__slots__": (), "qualname": f"{module}.{n}"}
                table[(module, n)] = type(n, (StandIn,), attrs)
    return MappingProxyType(table)


ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = _allow_table()
YOLOV5_CLASSES = frozenset(f"{m}.{n}" for m, names in _YOLOV5_MODULES.items() for n in names)


def resolve_global(module: str, name: str = "") -> Any | None:
    """The stand-in for an allow-listed global, or None (Python 2 '__builtin__' accepted)."""
    module = "builtins" if module == "__builtin__" else module
    return ALLOWED_GLOBALS.get((module, name))


# --- reading the archive --------------------------------------------------------------------

@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[tuple[zipfile.ZipFile, str]]:
    """Yield (zip, record prefix such as 'archive/') of a zip-format torch file."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: not a PyTorch checkpoint (expected a zip-format .pt file)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: cannot read checkpoint archive: {e}") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise WeightsError(f"{path}: not a PyTorch checkpoint (no data.pkl in the archive)")
        yield zf, pkl[0][: -len("data.pkl")]


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_NO_PUSH_OPS = frozenset({"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "FRAME", "PROTO"})


def _pickle_globals(data: bytes, path: Path) -> list[str]:
    """Globals a pickle names, read from its opcodes without executing anything.

    Used to route official vs own files and to refuse early with one message; the actual
    guards are the restricted find_class and torch's weights_only unpickler.
    """
    found: list[str] = []
    pushed: list[str | None] = []  # last values pushed: a string or None (anything else)
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            if op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = \
                    pushed[-1] if pushed else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(int(arg)))
            elif op.name not in _NO_PUSH_OPS:
                pushed.append(arg if op.name in _STRING_OPS else None)
            del pushed[:-2]
    except Exception as e:  # noqa: BLE001 - malformed opcodes from an untrusted file
        raise WeightsError(f"{path}: not a valid checkpoint pickle: {e}") from None
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; storages come from the zip's data/ records."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(zf.read(f"{prefix}data.pkl")))
        self._zf, self._prefix, self._path = zf, prefix, path
        self._storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        obj = resolve_global(module, name)
        if obj is None:
            raise WeightsError(f"{self._path}: refuses to load global '{module}.{name}' (not on "
                               "the allow-list of tensor, container and YOLOv5/torch.nn classes)")
        return obj

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str)):
            raise WeightsError(f"{self._path}: unexpected persistent id {pid!r}")
        key = pid[2]
        if key not in self._storages:  # tensors may share one storage record
            try:
                raw = bytearray(self._zf.read(f"{self._prefix}data/{key}"))
            except KeyError:
                raise WeightsError(f"{self._path}: storage record {key!r} missing") from None
            self._storages[key] = (torch.frombuffer(raw, dtype=torch.uint8).untyped_storage()
                                   if raw else torch.UntypedStorage(0))
        return StorageRef(pid[1].dtype, self._storages[key])


def _restricted_load(path: Path) -> Any:
    with _open_archive(path) as (zf, prefix):
        order = f"{prefix}byteorder"  # raw storages are in the writer's byte order
        if order in zf.namelist() and zf.read(order).decode(errors="replace") != sys.byteorder:
            raise WeightsError(f"{path}: storages are {zf.read(order)!r}-endian, this machine "
                               f"is {sys.byteorder}-endian")
        try:
            return _RestrictedUnpickler(zf, prefix, path).load()
        except WeightsError:
            raise
        except Exception as e:  # noqa: BLE001 - untrusted bytes: any failure = "not usable"
            raise WeightsError(f"{path}: not a valid checkpoint: {type(e).__name__}: {e}") from None


def _load_own(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refusals and corrupt files alike
        raise WeightsError(f"{path}: cannot load checkpoint safely: {e}") from None
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{path}: not a checkpoint (expected a dict, got {type(ckpt).__name__})")
    sd = ckpt.get("model") if ckpt.get("model") is not None else ckpt.get("ema")
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: checkpoint has no 'model' state_dict")
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer")}
    meta.setdefault("source", "yolo-ray")
    _fill_head_meta(meta, sd)
    return {k: _as_float(v) for k, v in sd.items()}, meta


# --- walking the stand-in objects ------------------------------------------------------------

def _module_state_dict(root: StandIn, path: Path) -> dict[str, torch.Tensor]:
    """Module.state_dict order: own parameters, own persistent buffers, then each child."""
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, StandIn]] = [("", root)]
    while stack:
        prefix, mod = stack.pop()
        state = mod.state
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, t in (state.get(group) or {}).items():
                if t is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise WeightsError(f"{path}: {prefix}{name} is not a tensor")
                out[prefix + name] = t
        children = [(f"{prefix}{n}.", c) for n, c in (state.get("_modules") or {}).items()
                    if c is not None]
        if not all(isinstance(c, StandIn) for _, c in children):
            raise WeightsError(f"{path}: unexpected object in the module tree under {prefix!r}")
        stack.extend(reversed(children))
    return out


def _official_meta(root: StandIn, ckpt: dict, sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state = root.state
    meta: dict[str, Any] = {"source": "yolov5"}
    meta.update({k: ckpt[k] for k in ("epoch", "date", "git") if k in ckpt and _plain(ckpt[k])})
    for key in ("nc", "yaml", "hyp"):
        value = state.get(key)
        meta[key] = value if _plain(value) and value is not None else None
    names = state.get("names")
    if isinstance(names, dict):  # newer YOLOv5 stores {id: name}
        names = [names[k] for k in sorted(names)]
    meta["names"] = [str(n) for n in names] if isinstance(names, (list, tuple)) else None
    stride = state.get("stride")
    if isinstance(stride, torch.Tensor):
        meta["stride"] = [float(s) for s in stride.float()]
    _fill_head_meta(meta, sd)
    return meta


def _fill_head_meta(meta: dict[str, Any], sd: Mapping[str, torch.Tensor]) -> None:
    """nc, names and anchors (grid units) from the Detect tensors when metadata lacks them."""
    heads = [k[: -len("anchors")] for k, v in sd.items() if k.endswith(".anchors") and v.ndim == 3]
    if heads:
        anchors = sd[heads[-1] + "anchors"]
        meta.setdefault("anchors", anchors.float().clone())
        bias = sd.get(heads[-1] + "m.0.bias")
        if meta.get("nc") is None and bias is not None:
            meta["nc"] = bias.numel() // anchors.shape[1] - 5
    if meta.get("names") is None and isinstance(meta.get("nc"), int):
        meta["names"] = [str(i) for i in range(meta["nc"])]
    meta.setdefault("nc", None)
    meta.setdefault("names", None)
    meta.setdefault("yaml", None)


def _plain(x: Any) -> bool:
    """True for YAML-like data only, so no stand-ins or tensors leak into metadata."""
    if isinstance(x, (str, int, float, bool, type(None))):
        return True
    if isinstance(x, (list, tuple)):
        return all(_plain(v) for v in x)
    if isinstance(x, dict):
        return all(_plain(k) and _plain(v) for k, v in x.items())
    return False


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """Official weights are FP16; like YOLOv5's `.float()`, widen floating tensors to FP32."""
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t
