"""Read `.onnx` files with protobuf alone (no `onnx` package in the serving images).

The schema below is the subset of `onnx/onnx.proto` (proto2) that an inference graph uses, with
ONNX's own field numbers; fields left out are skipped by the parser as unknown fields.
`tests/test_onnx_torch.py` checks every number against the `onnx` package's descriptors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from vidtag.errors import ModelError

_PACKAGE = "vidtag_onnx_subset"
_F = descriptor_pb2.FieldDescriptorProto

# message (ONNX's nested `A.B` written `A_B`) -> [(field, number, type, repeated, message type)]
SCHEMA: dict[str, list[tuple[str, int, int, bool, str | None]]] = {
    "ModelProto": [
        ("ir_version", 1, _F.TYPE_INT64, False, None),
        ("opset_import", 8, _F.TYPE_MESSAGE, True, "OperatorSetIdProto"),
        ("graph", 7, _F.TYPE_MESSAGE, False, "GraphProto"),
    ],
    "OperatorSetIdProto": [
        ("domain", 1, _F.TYPE_STRING, False, None),
        ("version", 2, _F.TYPE_INT64, False, None),
    ],
    "GraphProto": [
        ("node", 1, _F.TYPE_MESSAGE, True, "NodeProto"),
        ("name", 2, _F.TYPE_STRING, False, None),
        ("initializer", 5, _F.TYPE_MESSAGE, True, "TensorProto"),
        ("input", 11, _F.TYPE_MESSAGE, True, "ValueInfoProto"),
        ("output", 12, _F.TYPE_MESSAGE, True, "ValueInfoProto"),
        ("sparse_initializer", 15, _F.TYPE_BYTES, True, None),  # only counted: refused
    ],
    "NodeProto": [
        ("input", 1, _F.TYPE_STRING, True, None),
        ("output", 2, _F.TYPE_STRING, True, None),
        ("name", 3, _F.TYPE_STRING, False, None),
        ("op_type", 4, _F.TYPE_STRING, False, None),
        ("attribute", 5, _F.TYPE_MESSAGE, True, "AttributeProto"),
        ("domain", 7, _F.TYPE_STRING, False, None),
    ],
    "AttributeProto": [
        ("name", 1, _F.TYPE_STRING, False, None),
        ("f", 2, _F.TYPE_FLOAT, False, None),
        ("i", 3, _F.TYPE_INT64, False, None),
        ("s", 4, _F.TYPE_BYTES, False, None),
        ("t", 5, _F.TYPE_MESSAGE, False, "TensorProto"),
        ("floats", 7, _F.TYPE_FLOAT, True, None),
        ("ints", 8, _F.TYPE_INT64, True, None),
        ("type", 20, _F.TYPE_INT32, False, None),  # AttributeType enum, read as its number
        ("ref_attr_name", 21, _F.TYPE_STRING, False, None),
    ],
    "TensorProto": [
        ("dims", 1, _F.TYPE_INT64, True, None),
        ("data_type", 2, _F.TYPE_INT32, False, None),
        ("float_data", 4, _F.TYPE_FLOAT, True, None),
        ("int32_data", 5, _F.TYPE_INT32, True, None),
        ("int64_data", 7, _F.TYPE_INT64, True, None),
        ("name", 8, _F.TYPE_STRING, False, None),
        ("raw_data", 9, _F.TYPE_BYTES, False, None),
        ("double_data", 10, _F.TYPE_DOUBLE, True, None),
        ("data_location", 14, _F.TYPE_INT32, False, None),  # 1 = EXTERNAL
    ],
    "ValueInfoProto": [
        ("name", 1, _F.TYPE_STRING, False, None),
        ("type", 2, _F.TYPE_MESSAGE, False, "TypeProto"),
    ],
    "TypeProto": [("tensor_type", 1, _F.TYPE_MESSAGE, False, "TypeProto_Tensor")],
    "TypeProto_Tensor": [
        ("elem_type", 1, _F.TYPE_INT32, False, None),
        ("shape", 2, _F.TYPE_MESSAGE, False, "TensorShapeProto"),
    ],
    "TensorShapeProto": [
        ("dim", 1, _F.TYPE_MESSAGE, True, "TensorShapeProto_Dimension"),
    ],
    "TensorShapeProto_Dimension": [
        ("dim_value", 1, _F.TYPE_INT64, False, None),
        ("dim_param", 2, _F.TYPE_STRING, False, None),
    ],
}

# AttributeProto.AttributeType numbers.
ATTR_FLOAT, ATTR_INT, ATTR_STRING, ATTR_TENSOR, ATTR_FLOATS, ATTR_INTS = 1, 2, 3, 4, 6, 7

# TensorProto.DataType -> numpy dtype (the types an exported float network carries).
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
}


def _build_classes() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2"
    )
    for message, fields in SCHEMA.items():
        m = fdp.message_type.add(name=message)
        for name, number, kind, repeated, type_name in fields:
            f = m.field.add(name=name, number=number, type=kind)
            f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if type_name is not None:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in SCHEMA
    }


_CLASSES = _build_classes()


def load_model(path: str | Path) -> Any:
    """Parse an `.onnx` file into a ModelProto of the subset schema; ModelError if it is not
    one, or if its graph keeps tensors outside the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read ONNX file {path}: {exc}") from exc
    model = _CLASSES["ModelProto"]()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise ModelError(f"{path} is not an ONNX model: {exc}") from exc
    if not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{path} is not an ONNX model: no graph")
    if model.graph.sparse_initializer:
        raise ModelError(f"{path}: sparse initializers are not supported")
    return model


def tensor_to_numpy(t: Any) -> np.ndarray:
    """A TensorProto's value as a numpy array (its dtype from DTYPES)."""
    dtype = DTYPES.get(int(t.data_type))
    if dtype is None:
        raise ModelError(f"tensor {t.name!r}: unsupported ONNX data type {t.data_type}")
    if t.data_location == 1:
        raise ModelError(f"tensor {t.name!r}: external data is not supported")
    shape = tuple(int(d) for d in t.dims)
    if t.raw_data:
        arr = np.frombuffer(t.raw_data, dtype=dtype)
    elif dtype.kind == "f" and dtype.itemsize == 8:
        arr = np.asarray(t.double_data, dtype=dtype)
    elif dtype.kind == "f" and dtype.itemsize == 4:
        arr = np.asarray(t.float_data, dtype=dtype)
    elif dtype.itemsize == 8:
        arr = np.asarray(t.int64_data, dtype=dtype)
    else:  # int32, and float16 stored as its bit patterns in int32_data
        bits = np.asarray(t.int32_data, dtype=np.int32)
        arr = bits.astype(np.uint16).view(dtype) if dtype.kind == "f" else bits.astype(dtype)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise ModelError(f"tensor {t.name!r}: {arr.size} values for shape {shape}")
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def attribute_value(a: Any) -> Any:
    """An AttributeProto's value: float, int, bytes, numpy array, or a tuple of floats / ints."""
    kind = int(a.type)
    if a.ref_attr_name:
        raise ModelError(f"attribute {a.name!r} refers to a function attribute")
    if kind == ATTR_FLOAT:
        return float(a.f)
    if kind == ATTR_INT:
        return int(a.i)
    if kind == ATTR_STRING:
        return bytes(a.s)
    if kind == ATTR_TENSOR:
        return tensor_to_numpy(a.t)
    if kind == ATTR_FLOATS:
        return tuple(float(v) for v in a.floats)
    if kind == ATTR_INTS:
        return tuple(int(v) for v in a.ints)
    raise ModelError(f"attribute {a.name!r} has an unsupported type ({kind})")


def value_shape(v: Any) -> tuple[int | None, ...] | None:
    """A ValueInfoProto's tensor shape, None for a symbolic dimension (the batch); None when
    the file does not say."""
    t = v.type.tensor_type
    if not v.HasField("type") or not t.HasField("shape"):
        return None
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)
