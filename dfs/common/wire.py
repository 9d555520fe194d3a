"""Records to and from their wire form: the list of their fields, in declaration order.

A record is a dataclass (frozen, with slots, made with ``@record`` or any
plain one such as ``dfs.common.records.Attr``). Its wire form is the list of
its fields in declaration order, nested records as lists too; msgpack packs
it. Request records (``trim``) leave off trailing fields that hold their
default; a ``bare`` record travels as its one field's value (nil with none).

Each record class gets three functions generated for it, as dataclasses
generates ``__init__``: ``encode``, ``strict`` (untrusted input: the field
count and every field's type against its annotation, else InvalidArgument,
EINVAL) and ``loose`` (a shard's reply: no checks). Field types understood:
int, bool (an int), float (an int or float, not a bool), bytes, str, Any,
records, ``list[X]`` and unions of these with None.

Imports dfs.common.errors only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from dfs.common import errors as err

T = typing.TypeVar("T")

_Conv = Callable[[Any], Any]


def _bad(what: str) -> err.InvalidArgument:
    return err.InvalidArgument(f"bad arguments: {what}")


_SIMPLE = {int: "isinstance({a}, int)", bool: "isinstance({a}, int)", bytes: "isinstance({a}, bytes)",
           str: "isinstance({a}, str)", float: "(isinstance({a}, (int, float)) and not isinstance({a}, bool))"}


def _simple_check(tp: Any) -> str | None:
    """An inline type test for a plain field type (``{a}``: the value), or None."""
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [x for x in args if x is not type(None)]
        if len(args) == 2 and len(rest) == 1 and rest[0] in _SIMPLE:
            return "({a} is None or " + _SIMPLE[rest[0]] + ")"
    return None


class _Codec:
    """How one record class goes to and from its wire list. The three functions are
    generated per class (as dataclasses generates __init__): the hot paths of every
    request and reply run no loop over field descriptions."""

    __slots__ = ("cls", "names", "required", "bare", "encode", "strict", "loose")

    def __init__(self, cls: type, trim: bool, bare: bool) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        n = len(fields)
        if bare and n > 1:  # nil for none
            raise TypeError(f"{cls.__name__}: a bare record has at most one field")
        self.cls = cls
        self.names = tuple(f.name for f in fields)
        self.required = sum(1 for f in fields if f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)
        self.bare = bare
        convs = [_convs(hints[f.name]) for f in fields]
        g: dict[str, Any] = {"cls": cls, "bad": _bad, "name": cls.__name__, "new": object.__new__}
        # A frozen dataclass's __init__ sets each field through object.__setattr__; the slots'
        # own descriptors set them in half the time (Attr: 1.2 -> 0.6 us), which every reply
        # decoded and every request a shard reads pays.
        slots = [cls.__dict__.get(f.name) for f in fields]
        fast = "__post_init__" not in cls.__dict__ and all(
            type(d).__name__ == "member_descriptor" for d in slots)
        for k, d in enumerate(slots):
            if fast:
                g[f"p{k}"] = d.__set__
        for k, (f, (strict, loose, enc)) in enumerate(zip(fields, convs)):
            g[f"s{k}"], g[f"l{k}"], g[f"e{k}"], g[f"d{k}"] = strict, loose, enc, f.default
        a = [f"a{k}" for k in range(n)]
        # encode
        vals = [f"e{k}(o.{f.name})" if convs[k][2] else f"o.{f.name}" for k, f in enumerate(fields)]
        if bare:
            body = [f"    return {vals[0] if n else 'None'}"]
        elif trim and self.required < n:
            body = [f"    {a[k]} = {v}" for k, v in enumerate(vals)] + [f"    out = [{', '.join(a)}]"]
            for k in range(n - 1, self.required - 1, -1):  # trailing fields at their default go
                g[f"t{k}"] = type(fields[k].default)
                body.append(f"    if len(out) == {k + 1} and {a[k]} == d{k} and type({a[k]}) is t{k}: del out[{k}]")
            body.append("    return out")
        else:
            body = [f"    return [{', '.join(vals)}]"]
        # strict decode (untrusted input)
        sbody = []
        if bare:
            sbody.append("    v = [v]" if n else "    v = []")
        sbody += ["    if type(v) is not list:",
                  "        raise bad(f'{name} is a list, not {type(v).__name__}')",
                  "    n = len(v)",
                  f"    if n < {self.required} or n > {n}:",
                  f"        raise bad(f'{{name}} takes {self.required} to {n} fields, not {{n}}')"]
        for k, f in enumerate(fields):
            get = f"v[{k}]" if k < self.required else f"(v[{k}] if n > {k} else d{k})"
            sbody.append(f"    {a[k]} = {get}")
            chk = _simple_check(hints[f.name])
            if chk is None:
                sbody.append(f"    {a[k]} = s{k}({a[k]})")
            else:
                test = chk.format(a=a[k])
                if k >= self.required:  # a default stands
                    test = f"n <= {k} or {test}"
                tp = hints[f.name]
                g[f"w{k}"] = f"{f.name}: {tp.__name__ if isinstance(tp, type) else tp} expected"
                sbody += [f"    if not ({test}):",
                          f"        raise bad(f'{{name}}.{{w{k}}}, not {{type({a[k]}).__name__}}')"]
        sbody += _construct(fast, a)
        # loose decode (a shard's reply)
        lbody = []
        if bare:
            lbody.append("    v = [v]" if n else "    v = []")
        if not fast and not any(c[1] for c in convs):
            lbody.append("    return cls(*v)")
        else:
            lbody.append("    n = len(v)")
            for k in range(n):
                get = f"v[{k}]" if k < self.required else f"(v[{k}] if n > {k} else d{k})"
                lbody.append(f"    {a[k]} = {get}" if not convs[k][1] else f"    {a[k]} = l{k}({get})")
            lbody += _construct(fast, a)
        src = "def encode(o):\n" + "\n".join(body) + "\n\ndef strict(v):\n" + "\n".join(sbody) + \
              "\n\ndef loose(v):\n" + "\n".join(lbody) + "\n"
        exec(compile(src, f"<codec of {cls.__name__}>", "exec"), g)  # noqa: S102 - our own source
        self.encode, self.strict, self.loose = g["encode"], g["strict"], g["loose"]

    def decode(self, v: Any, check: bool) -> Any:
        return self.strict(v) if check else self.loose(v)


def _construct(fast: bool, a: list[str]) -> list[str]:
    """Source lines that return the record made of the values ``a``."""
    if not fast:
        return [f"    return cls({', '.join(a)})"]
    return ["    o = new(cls)", *(f"    p{k}(o, {x})" for k, x in enumerate(a)), "    return o"]


_CODECS: dict[type, _Codec] = {}


def codec(cls: type) -> _Codec:
    """The codec of a record class (made on first use for plain dataclasses like ``Attr``)."""
    c = _CODECS.get(cls)
    if c is None:
        c = _CODECS[cls] = _Codec(cls, trim=False, bare=False)
    return c


def to_wire(obj: Any) -> Any:
    """The wire form of a record, a list of records, or a plain value. An object with a
    ``__wire__`` method gives its own (a shard passes its inode records where a reply
    says ``Attr``: ``Inode.__wire__`` is Attr's wire form, without building an Attr)."""
    c = _CODECS.get(type(obj))
    if c is not None:
        return c.encode(obj)
    if type(obj) is list:
        return [to_wire(x) for x in obj]
    w = getattr(obj, "__wire__", None)
    if w is not None:
        return w()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return codec(type(obj)).encode(obj)
    return obj


def from_wire(cls: type[T], v: Any, check: bool = False) -> T:
    """A ``cls`` record from its wire form (``check``: untrusted input, see the module doc)."""
    return codec(cls).decode(v, check)


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convs(tp: Any) -> tuple[_Conv, _Conv | None, _Conv | None]:
    """(strict decode, loose decode or None, encode or None) for a field of type ``tp``."""
    if tp is Any:
        return (lambda v: v), None, None
    if tp in (int, bytes, str):
        def strict(v, tp=tp):
            if not isinstance(v, tp):
                raise _bad(f"{tp.__name__} expected, not {type(v).__name__}")
            return v
        return strict, None, None
    if tp is bool:
        def strict_bool(v):
            if not isinstance(v, int):  # bool, or an int used as one
                raise _bad(f"bool expected, not {type(v).__name__}")
            return v
        return strict_bool, None, None
    if tp is float:
        def strict_float(v):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f"number expected, not {type(v).__name__}")
            return v
        return strict_float, None, None
    if _is_record(tp):
        def strict_rec(v, tp=tp):
            return from_wire(tp, v, check=True)

        def loose_rec(v, tp=tp):
            return from_wire(tp, v)

        def enc_rec(v):
            if type(v) is list:  # already in wire form (a shard's hot loop, see READDIR)
                return v
            c = _CODECS.get(type(v))
            if c is not None:
                return c.encode(v)
            w = getattr(v, "__wire__", None)  # a shard's own record (Inode for Attr)
            return w() if w is not None else to_wire(v)
        return strict_rec, loose_rec, enc_rec
    origin = typing.get_origin(tp)
    if origin is list or tp is list:
        (item,) = typing.get_args(tp) or (Any,)
        s, lo, e = _convs(item)

        def strict_list(v):
            if not isinstance(v, list):
                raise _bad(f"list expected, not {type(v).__name__}")
            return [s(x) for x in v]
        loose = None if lo is None else (lambda v: [lo(x) for x in v])
        enc = None if e is None else (lambda v: [e(x) for x in v])
        return strict_list, loose, enc
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        parts = [(m, _convs(m)) for m in members if m is not type(None)]
        optional = type(None) in members

        def pick(v):
            for m, c in parts:
                if _wire_is(m, v):
                    return c
            return None

        def strict_union(v):
            if v is None and optional:
                return None
            c = pick(v)
            if c is None:
                raise _bad(f"{tp} expected, not {type(v).__name__}")
            return c[0](v)

        def loose_union(v):
            c = None if v is None else pick(v)
            return v if c is None or c[1] is None else c[1](v)

        encs = [c[2] for _, c in parts if c[2] is not None]
        if len(encs) == 1 and optional and len(parts) == 1:
            def enc_union(v, e=encs[0]):
                return None if v is None else e(v)
        else:
            def enc_union(v):
                return to_wire(v)
        needs = any(c[1] is not None for _, c in parts)
        return strict_union, (loose_union if needs else None), (enc_union if needs else None)
    raise TypeError(f"no wire form for {tp!r}")


def _wire_is(tp: Any, v: Any) -> bool:
    """Whether wire value ``v`` may be a ``tp`` (to pick a member of a union)."""
    if _is_record(tp) or tp is list or typing.get_origin(tp) is list:
        return isinstance(v, list)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is Any:
        return True
    return isinstance(v, tp)


def register(cls: type, *, trim: bool = False, bare: bool = False) -> _Codec:
    """Make (or remake) the codec of dataclass ``cls`` (``trim``, ``bare``: see the module doc)."""
    c = _CODECS[cls] = _Codec(cls, trim=trim, bare=bare)
    return c


def record(cls: type | None = None, *, bare: bool = False):
    """Make ``cls`` a frozen slotted dataclass with a wire codec (``bare``: see the module doc)."""
    def deco(c: type) -> type:
        c = dataclasses.dataclass(frozen=True, slots=True)(c)
        register(c, bare=bare)
        return c
    return deco if cls is None else deco(cls)
