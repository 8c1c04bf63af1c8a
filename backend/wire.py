"""Fixed-layout wire structures, declared once.

The vhost-user and vfio-user messages and the ``<linux/vfio.h>`` ioctl arguments are C structs of
fixed-width integers. A :class:`Layout` names their fields in order and places them as a C compiler
does (each field at a multiple of its own size, the whole padded to its widest field), so a
declaration reads like the header it comes from and never spells padding by hand. From that one
declaration come the bytes (:meth:`Layout.pack`, :meth:`Layout.unpack`, little-endian), the size,
the range check of every field, and the ctypes structure an ioctl fills in (:meth:`Layout.ctype`).

:class:`Record` is the dataclass form for payloads whose fields *are* the struct's fields: annotate
them ``U8`` .. ``U64`` (``Annotated[int, ...]``, so they stay plain ints to type checkers) and the
layout, ``pack`` and ``unpack`` follow from the annotations.
"""

from __future__ import annotations

import ctypes
import struct
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Protocol, Self, TypeAlias, overload


class WireError(Exception):
    """Bytes that are not a valid message of a protocol; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Scalar:
    """A C integer type: its ``struct`` format character and its ctypes type."""

    code: str
    ctype: type[ctypes._SimpleCData[int]]

    @property
    def size(self) -> int:
        return struct.calcsize(self.code)

    @property
    def signed(self) -> bool:
        return self.code.islower()

    def out_of_range(self, name: str, value: int) -> str | None:
        """Why ``value`` does not fit, or None."""
        bits = 8 * self.size
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if self.signed else (0, 1 << bits)
        if lo <= value < hi:
            return None
        return f"{name}={value} does not fit {'s' if self.signed else 'u'}{bits}"


UINT8: Final = Scalar("B", ctypes.c_uint8)
UINT16: Final = Scalar("H", ctypes.c_uint16)
UINT32: Final = Scalar("I", ctypes.c_uint32)
UINT64: Final = Scalar("Q", ctypes.c_uint64)
INT32: Final = Scalar("i", ctypes.c_int32)

#: Field annotations for :class:`Record` dataclasses.
U8: TypeAlias = Annotated[int, UINT8]
U16: TypeAlias = Annotated[int, UINT16]
U32: TypeAlias = Annotated[int, UINT32]
U64: TypeAlias = Annotated[int, UINT64]


@dataclass(frozen=True)
class Array:
    """``item name[count]``: packed from and unpacked to a tuple of ``count`` ints."""

    item: Scalar
    count: int


Field: TypeAlias = Scalar | Array


class Layout:
    """A C struct: ``Layout(argsz=UINT32, flags=UINT32, iova=UINT64)``, fields in declaration order."""

    def __init__(self, **fields: Field) -> None:
        self.fields: Final[Mapping[str, Field]] = dict(fields)
        fmt, offset, widest = "<", 0, 1
        for f in self.fields.values():
            item = f.item if isinstance(f, Array) else f
            pad = -offset % item.size
            fmt += f"{pad}x" if pad else ""
            fmt += f"{f.count}{item.code}" if isinstance(f, Array) else item.code
            offset += pad + item.size * (f.count if isinstance(f, Array) else 1)
            widest = max(widest, item.size)
        tail = -offset % widest
        self._struct: Final = struct.Struct(fmt + (f"{tail}x" if tail else ""))

    @property
    def size(self) -> int:
        return self._struct.size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def extend(self, **more: Field) -> Layout:
        """This struct with more fields after it (a C struct that begins with another)."""
        return Layout(**self.fields, **more)

    def pack(self, **values: Any) -> bytes:
        """The bytes of the struct; every field must be given (an array as a sequence)."""
        flat: list[int] = []
        for name, f in self.fields.items():
            value = values[name]
            flat.extend(value if isinstance(f, Array) else (value,))
        return self._struct.pack(*flat)

    def pack_obj(self, obj: object) -> bytes:
        """:meth:`pack` with the fields read from ``obj``'s attributes of the same names."""
        return self.pack(**{name: getattr(obj, name) for name in self.fields})

    def unpack(self, raw: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """Field values by name from ``raw[offset:offset + size]`` (ints; arrays as tuples)."""
        flat = iter(self._struct.unpack_from(raw, offset))
        return {name: tuple(next(flat) for _ in range(f.count)) if isinstance(f, Array) else next(flat)
                for name, f in self.fields.items()}

    def out_of_range(self, obj: object) -> str | None:
        """Why one of ``obj``'s fields does not fit its C type (the first in order), or None."""
        for name, f in self.fields.items():
            value = getattr(obj, name)
            if isinstance(f, Array):
                for i, v in enumerate(value):
                    if (reason := f.item.out_of_range(f"{name}[{i}]", v)) is not None:
                        return reason
            elif (reason := f.out_of_range(name, value)) is not None:
                return reason
        return None

    def ctype(self, name: str) -> type[ctypes.Structure]:
        """The same struct as a native ctypes structure, for ioctls the kernel writes results into."""
        fields = [(n, f.item.ctype * f.count if isinstance(f, Array) else f.ctype) for n, f in self.fields.items()]
        return type(name, (ctypes.Structure,), {"_fields_": fields})


class Record:
    """Base of frozen dataclasses whose annotated ``U8``..``U64`` fields are, in order, a C struct.

    ``LAYOUT`` is built from those annotations when the class is defined; fields without a C type
    are left out of it. A class whose struct is not its fields (a word packing a flag and an index)
    declares ``LAYOUT`` itself and gives the struct's fields as properties.
    """

    __slots__ = ()
    LAYOUT: ClassVar[Layout]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "LAYOUT" in cls.__dict__:  # declared by hand, or kept by dataclass(slots=True) re-creating the class
            return
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {name: meta for name, hint in hints.items() if typing.get_origin(hint) is Annotated
                  for meta in hint.__metadata__ if isinstance(meta, Scalar | Array)}
        if fields:
            cls.LAYOUT = Layout(**fields)

    def pack(self) -> bytes:
        return self.LAYOUT.pack_obj(self)

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview) -> Self:
        """The record in ``raw``, which holds exactly ``LAYOUT.size`` bytes (the caller checked)."""
        return cls(**cls.LAYOUT.unpack(raw))

    def wire_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.LAYOUT.fields}


class _Flagged(Protocol):
    @property
    def flags(self) -> int: ...


class FlagBit:
    """A read-only bool attribute saying whether ``mask`` is set in the object's ``flags``, declared once
    per flag: ``is_write = FlagBit(DescFlags.WRITE)`` (a descriptor's NEXT/WRITE/INDIRECT, a header's REPLY)."""

    __slots__ = ("mask",)

    def __init__(self, mask: int) -> None:
        self.mask = int(mask)

    @overload
    def __get__(self, obj: None, owner: type) -> FlagBit: ...

    @overload
    def __get__(self, obj: _Flagged, owner: type) -> bool: ...

    def __get__(self, obj: _Flagged | None, owner: type) -> FlagBit | bool:
        return self if obj is None else bool(obj.flags & self.mask)
