"""Read PyTorch's legacy (pre-1.6, non-zip) checkpoint format with numpy alone.

Why: the two image backbones we rebuild ship only as `.pt`/`.pth` files, and the
converter must not need torch. The legacy layout is: magic pickle, protocol
pickle, sys-info pickle, the object pickle (tensors refer to storages through
persistent ids), a pickle listing storage keys, then each storage as a little
endian int64 element count followed by its raw bytes, in that key order.
"""

import collections
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        if name not in _DTYPES:
            raise ValueError(f"unsupported storage type torch.{name}")
        self.dtype = np.dtype(_DTYPES[name])


class _Storage:
    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.data = None


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self):
        data = self.storage.data
        if data is None:
            raise ValueError("tensor refers to a storage that the file never wrote")
        item = data.itemsize
        need = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1 if self.size else self.offset + 1
        if need > data.size:
            raise ValueError(f"tensor of size {self.size} overruns its storage ({data.size} elements)")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    return _LazyTensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id kind {kind!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def load_state_dict(path):
    """Return an ordered {name: numpy array} of the checkpoint at `path`."""
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch checkpoint (bad magic number)")
        proto = pickle.load(f)
        if proto != PROTOCOL:
            raise ValueError(f"{path}: unsupported protocol version {proto}")
        pickle.load(f)  # sys info: endianness and type sizes; we only support little endian
        storages = {}
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * st.dtype.itemsize)
            if len(raw) != numel * st.dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            st.data = np.frombuffer(raw, dtype=st.dtype)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return collections.OrderedDict(
        (k, v.materialise()) for k, v in obj.items() if isinstance(v, _LazyTensor)
    )
