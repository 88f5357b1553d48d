"""Shape profiles: the one source of dynamic axes, engine profiles and run-time input checks.
A :class:`ShapeProfile` maps each input to an :class:`InputProfile` of min/opt/max shapes; axes that vary
are dynamic and named (``batch``, ``height``, ``width``, ``length``)."""

from __future__ import annotations

import json
import math
import numbers
import re
import reprlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .errors import InputError, ProfileError

Shape = tuple[int, ...]

#: Bounds on what a profile (often read from an untrusted file) may ask for: TensorRT's 8 dims, 2^28
#: elements per tensor (1 GiB of float32; parity runs allocate several copies), the dtypes runners feed.
MAX_RANK = 8
MAX_ELEMENTS = 2**28
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

#: Axis names by rank, NCHW for images and NCL for sequences.
AXIS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("batch", "features"),
    3: ("batch", "channels", "length"),
    4: ("batch", "channels", "height", "width"),
}


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise ValueError(f"the number {reprlib.repr(text)} has {len(text.lstrip('-'))} digits")
    return int(text)


def read_json(text: str):
    """``json.loads`` for text read from a file: an integer of over 18 digits is a ValueError naming it (Python's
    own, past 4300 digits, tells the user to raise the interpreter's limit), like any other malformed JSON."""
    return json.loads(text, parse_int=_json_int)


def parse_shape(text: str | Sequence[int]) -> Shape:
    """``"1x3x64x64"`` (or ``"1,3,64,64"`` or a sequence) -> ``(1, 3, 64, 64)``."""
    if not isinstance(text, str):
        if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in text):
            raise ProfileError(f"shape {reprlib.repr(text)} must be a list of integers")
        shape = tuple(int(d) for d in text)
    else:
        parts = re.split(r"\s*[x,×]\s*|\s+", text.strip())  # "1x4x" has an empty last part: refused, not 1x4
        if not all(re.fullmatch(r"[0-9]{1,18}", p) for p in parts):  # ASCII digits ('²'.isdigit() is True)
            raise ProfileError(f"cannot read shape {reprlib.repr(text)}: write it as NxCxHxW, e.g. 1x3x64x64")
        shape = tuple(int(p) for p in parts)
    if any(d <= 0 for d in shape):
        raise ProfileError(f"shape {format_shape(shape)} has a non-positive dimension")
    return shape


def parse_shapes(text: str, inputs: Sequence[str] | None = None, option: str = "--shape") -> dict[str, Shape]:
    """trtexec's ``name:NxCxHxW[,name:...]`` (``--minShapes=a:1x3x8x8,b:1x4``) -> input name -> shape, in
    ``inputs``' order when given. The unnamed ``NxCxHxW`` (or ``N,C,H,W``) names the one input, ``inputs[0]``
    (``input`` without ``inputs``). With ``inputs`` (the model's input names) every one must be given and no
    other; ``option`` names the flag in errors. A name may hold colons (``x:0:1x3``): the last one splits."""
    named = ":" in text
    if not named:
        if inputs is not None and len(inputs) != 1:
            raise ProfileError(
                f"{option} {reprlib.repr(text)}: the model has {len(inputs)} inputs ({', '.join(inputs)}); "
                f"name each, e.g. {option} {','.join(f'{n}:1x3x64x64' for n in inputs)}"
            )
        return {inputs[0] if inputs else "input": _parse_option_shape(text, option)}
    shapes: dict[str, Shape] = {}
    for entry in text.split(","):
        name, _, dims = entry.strip().rpartition(":")
        if not name:
            raise ProfileError(f"{option} {reprlib.repr(text)}: write each input as name:NxCxHxW, e.g. input:1x3x64x64")
        if name in shapes:
            raise ProfileError(f"{option} names input {name!r} twice")
        shapes[name] = _parse_option_shape(dims, f"{option} {name}")
    if inputs is None:
        return shapes
    unknown, missing = [n for n in shapes if n not in inputs], [n for n in inputs if n not in shapes]
    if unknown or missing:
        raise ProfileError(
            f"{option} {reprlib.repr(text)}: the model's inputs are {', '.join(inputs)}"
            + (f"; unknown {', '.join(map(repr, unknown))}" if unknown else "")
            + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
        )
    return {n: shapes[n] for n in inputs}


def _parse_option_shape(text: str, option: str) -> Shape:
    try:
        return parse_shape(text)
    except ProfileError as e:
        raise ProfileError(f"{option}: {e}") from None


def format_shape(shape: Sequence[int | str | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


@dataclass(frozen=True)
class InputProfile:
    """min/opt/max shapes of one input; ``opt`` is what engines tune for and exports trace with."""

    name: str
    min: Shape
    opt: Shape
    max: Shape
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shapes = (self.min, self.opt, self.max)
        if len({len(s) for s in shapes}) != 1:
            raise ProfileError(
                f"input {self.name!r}: min {format_shape(self.min)}, opt {format_shape(self.opt)} and "
                f"max {format_shape(self.max)} must have the same rank"
            )
        if not 1 <= self.rank <= MAX_RANK:
            raise ProfileError(f"input {self.name!r} has rank {self.rank}; ranks 1 to {MAX_RANK} are supported")
        if math.prod(self.max) > MAX_ELEMENTS:
            raise ProfileError(
                f"input {self.name!r}: max shape {format_shape(self.max)} has over {MAX_ELEMENTS} "
                "elements, more than any tensor effattn allocates"
            )
        if self.dtype not in DTYPES:
            raise ProfileError(
                f"input {self.name!r} has dtype {reprlib.repr(self.dtype)}; expected one of {', '.join(DTYPES)}"
            )
        for axis, (lo, mid, hi) in enumerate(zip(*shapes)):
            if lo <= 0 or not lo <= mid <= hi:
                raise ProfileError(
                    f"input {self.name!r} axis {axis} ({self.axis_names[axis]}): need 0 < min <= opt <= max, "
                    f"got {lo}, {mid}, {hi}"
                )

    @property
    def rank(self) -> int:
        return len(self.opt)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return AXIS_NAMES.get(self.rank, tuple(f"dim{i}" for i in range(self.rank)))

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> name, for every axis whose size may vary."""
        return {i: self.axis_names[i] for i in range(self.rank) if self.min[i] != self.max[i]}

    @property
    def symbolic_shape(self) -> tuple[int | str, ...]:
        """The shape with dynamic axes named, as ONNX and Triton write it."""
        dyn = self.dynamic_axes
        return tuple(dyn.get(i, self.opt[i]) for i in range(self.rank))

    def check(self, shape: Sequence[int]) -> None:
        """Raise :class:`InputError` naming the first axis of ``shape`` outside this profile."""
        shape = tuple(shape)
        if len(shape) != self.rank:
            raise InputError(
                f"input {self.name!r} has rank {len(shape)} (shape {format_shape(shape)}), expected rank "
                f"{self.rank} like {format_shape(self.symbolic_shape)}"
            )
        for axis, size in enumerate(shape):
            lo, hi = self.min[axis], self.max[axis]
            if not lo <= size <= hi:
                what = f"must be {lo}" if lo == hi else f"must be in [{lo}, {hi}]"
                raise InputError(
                    f"input {self.name!r} axis {axis} ({self.axis_names[axis]}) is {size}; it {what} "
                    f"(profile min {format_shape(self.min)}, max {format_shape(self.max)}); "
                    "re-export with a wider profile to accept it"
                )

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "dtype": self.dtype}


@dataclass(frozen=True)
class ShapeProfile(Mapping[str, InputProfile]):
    """Input name -> :class:`InputProfile`, in the model's input order."""

    inputs: tuple[InputProfile, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [p.name for p in self.inputs]
        if not names:
            raise ProfileError("a shape profile needs at least one input")
        if len(set(names)) != len(names):
            raise ProfileError(f"duplicate input names in profile: {names}")

    @property
    def static(self) -> bool:
        """Every input has one shape (min == max): CUDA graphs can be captured at once."""
        return all(p.min == p.max for p in self.inputs)

    @property
    def batch_range(self) -> tuple[int, int]:
        """The batch sizes every input accepts, (smallest, largest)."""
        return max(p.min[0] for p in self.inputs), min(p.max[0] for p in self.inputs)

    @classmethod
    def single(
        cls,
        min: str | Sequence[int],
        opt: str | Sequence[int] | None = None,
        max: str | Sequence[int] | None = None,
        name: str = "input",
    ) -> ShapeProfile:
        """A one-input profile; ``opt`` and ``max`` default to ``min`` (a static shape)."""
        lo = parse_shape(min)
        mid = parse_shape(opt) if opt is not None else lo
        hi = parse_shape(max) if max is not None else mid
        return cls((InputProfile(name, lo, mid, hi),))

    @classmethod
    def fixed(cls, shapes: Mapping[str, Sequence[int]]) -> ShapeProfile:
        """One shape per input (min = opt = max): what ``run --shape`` and ``bench --shapes`` feed."""
        return cls(tuple(InputProfile(name, s, s, s) for name, s in ((n, tuple(v)) for n, v in shapes.items())))

    @classmethod
    def from_options(
        cls,
        min: str | None = None,
        opt: str | None = None,
        max: str | None = None,
        default: ShapeProfile | None = None,
    ) -> ShapeProfile:
        """``--min/--opt/--max`` (each :func:`parse_shapes` text) over ``default`` (the model's own profile): an
        option given names every input of ``default``; without ``default``, ``opt`` defaults to ``min`` and
        ``max`` to ``opt``, and the inputs are those ``min`` names (``input`` when unnamed)."""
        if not (min or opt or max):
            if default is None:
                raise ProfileError(
                    "this model has no default shape profile: give --min, --opt and --max (e.g. 1x3x224x224)"
                )
            return default
        if default is None and min is None:
            raise ProfileError("this model has no default shape profile: give --min (and --opt/--max for dynamic axes)")
        names = list(default) if default is not None else list(parse_shapes(cast(str, min), None, "--min"))
        given = {k: parse_shapes(v, names, f"--{k}") for k, v in (("min", min), ("opt", opt), ("max", max)) if v}
        lo = given.get("min") or default.shapes("min")  # type: ignore[union-attr]  # default is set when min is not
        mid = given.get("opt") or (default.shapes("opt") if default is not None else lo)
        hi = given.get("max") or (default.shapes("max") if default is not None else mid)
        dtypes = {n: default[n].dtype for n in names} if default is not None else dict.fromkeys(names, "float32")
        return cls(tuple(InputProfile(n, lo[n], mid[n], hi[n], dtypes[n]) for n in names))

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping]) -> ShapeProfile:
        if not isinstance(data, Mapping) or not all(
            isinstance(k, str) and isinstance(d, Mapping) for k, d in data.items()
        ):
            raise ProfileError(
                f"malformed shape profile {reprlib.repr(data)}: expected "
                '{"input": {"min": [...], "opt": [...], "max": [...]}}'
            )
        try:
            return cls(
                tuple(
                    InputProfile(
                        name,
                        parse_shape(d["min"]),
                        parse_shape(d["opt"]),
                        parse_shape(d["max"]),
                        d.get("dtype", "float32"),
                    )
                    for name, d in data.items()
                )
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            if isinstance(e, ProfileError):
                raise
            raise ProfileError(f"malformed shape profile {reprlib.repr(data)}: {reprlib.repr(str(e))}") from None

    @classmethod
    def from_json(cls, text: str) -> ShapeProfile:
        try:
            return cls.from_dict(read_json(text))
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError, as are over-long integers
            raise ProfileError(f"shape profile is not valid JSON: {e}") from None  # both messages are short

    def to_dict(self) -> dict[str, dict]:
        return {p.name: p.to_dict() for p in self.inputs}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def shapes(self, which: str) -> dict[str, Shape]:
        """``which`` in {"min", "opt", "max"} -> input name -> shape."""
        return {p.name: getattr(p, which) for p in self.inputs}

    def __getitem__(self, name: str) -> InputProfile:
        for p in self.inputs:
            if p.name == name:
                return p
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (p.name for p in self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def __str__(self) -> str:
        return "; ".join(
            f"{p.name}: min {format_shape(p.min)}, opt {format_shape(p.opt)}, max {format_shape(p.max)}"
            for p in self.inputs
        )


def random_inputs(profile: ShapeProfile, which: str = "opt", seed: int | None = None) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs at the profile's ``min``, ``opt`` or ``max`` shapes."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in profile.shapes(which).items()}


def profile_inputs(profile: ShapeProfile, seed: int | None = None) -> list[dict[str, np.ndarray]]:
    """Random inputs at ``min``, ``opt`` and ``max``: the three shapes every parity check covers."""
    return [random_inputs(profile, which, seed) for which in ("min", "opt", "max")]
