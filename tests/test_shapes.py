import pytest

from effattn.errors import InputError, ProfileError
from effattn.shapes import ShapeProfile, parse_shape


def test_parse_shape_forms():
    assert parse_shape("1x3x64x64") == (1, 3, 64, 64)
    assert parse_shape("2,3,8,9") == (2, 3, 8, 9)
    assert parse_shape([4, 5]) == (4, 5)


@pytest.mark.parametrize("text,match", [("1x3xax4", "NxCxHxW"), ("", "NxCxHxW"), ("1x0x4x4", "non-positive")])
def test_parse_shape_rejects(text, match):
    with pytest.raises(ProfileError, match=match):
        parse_shape(text)


def test_profile_dynamic_axes_and_json_roundtrip():
    p = ShapeProfile.single("1x3x32x32", "2x3x64x64", "8x3x128x96")
    assert p["input"].dynamic_axes == {0: "batch", 2: "height", 3: "width"}
    assert p["input"].symbolic_shape == ("batch", 3, "height", "width")
    assert ShapeProfile.from_json(p.to_json()) == p


def test_profile_rejects_unordered_and_mixed_rank():
    with pytest.raises(ProfileError, match=r"axis 2 \(height\): need 0 < min <= opt <= max, got 64, 32, 128"):
        ShapeProfile.single("1x3x64x64", "1x3x32x32", "1x3x128x128")
    with pytest.raises(ProfileError, match="same rank"):
        ShapeProfile.single("1x3x64x64", "1x3x64", "1x3x64x64")
    with pytest.raises(ProfileError, match="not valid JSON"):
        ShapeProfile.from_json("{")


def test_profile_check_names_axis_and_range():
    p = ShapeProfile.single("1x3x32x32", "1x3x64x64", "4x3x128x128")["input"]
    p.check((4, 3, 128, 32))
    with pytest.raises(InputError, match=r"axis 3 \(width\) is 256; it must be in \[32, 128\]"):
        p.check((1, 3, 64, 256))
    with pytest.raises(InputError, match=r"axis 1 \(channels\) is 4; it must be 3"):
        p.check((1, 4, 64, 64))
    with pytest.raises(InputError, match="rank 3"):
        p.check((1, 3, 64))


def test_static_and_batch_range():
    from effattn.shapes import ShapeProfile

    assert ShapeProfile.single("2x3x8x8").static
    dynamic = ShapeProfile.single("1x3x8x8", "2x3x16x16", "4x3x32x32")
    assert not dynamic.static and dynamic.batch_range == (1, 4)


def test_first_line_of_any_error():
    from effattn.errors import first_line

    assert first_line(RuntimeError("\n  broke here\nstack...")) == "broke here"
    assert first_line(MemoryError()) == "MemoryError"  # an empty message must not raise IndexError
    openvino = "Exception from src/inference/src/cpp/core.cpp:84:\nException from src/a.cpp:1:\nUnable to read\n"
    assert first_line(RuntimeError(openvino)) == "Unable to read"  # OpenVINO's throw sites say nothing


def test_parse_shapes_named_and_unnamed():
    from effattn.shapes import parse_shapes

    assert parse_shapes("1x3x8x8") == {"input": (1, 3, 8, 8)}
    assert parse_shapes("1,3,8,8", ["x"]) == {"x": (1, 3, 8, 8)}  # the unnamed form (commas too) names the one input
    assert parse_shapes("mask:2x4, image:2x3x8x8", ["image", "mask"]) == {"image": (2, 3, 8, 8), "mask": (2, 4)}
    assert parse_shapes("x:0:1x4") == {"x:0": (1, 4)}  # TensorFlow-style names: the last colon splits


@pytest.mark.parametrize(
    "text,match",
    [
        ("1x3x8x8", r"the model has 2 inputs \(image, mask\); name each, e.g. --min image:1x3x64x64,mask:1x3x64x64"),
        ("image:1x3x8x8", r"the model's inputs are image, mask; missing 'mask'"),
        ("image:1x3x8x8,mask:1x4,extra:1", r"unknown 'extra'"),
        ("image:1x3x8x8,image:1x3x8x8,mask:1x4", "names input 'image' twice"),
        ("image:1x3xbx8,mask:1x4", "cannot read shape '1x3xbx8'"),
        ("image:1x3x0x8,mask:1x4", "non-positive"),
        (":1x4", "write each input as name:NxCxHxW"),
    ],
)
def test_parse_shapes_refuses(text, match):
    from effattn.shapes import parse_shapes

    with pytest.raises(ProfileError, match=match):
        parse_shapes(text, ["image", "mask"], "--min")


def test_profile_from_options_over_a_default_and_without_one():
    default = ShapeProfile.single("1x3x8x8", "2x3x16x16", "4x3x32x32", name="image")
    assert ShapeProfile.from_options(default=default) is default
    p = ShapeProfile.from_options(min="image:1x3x4x4", default=default)
    assert p.shapes("min") == {"image": (1, 3, 4, 4)} and p.shapes("max") == {"image": (4, 3, 32, 32)}
    two = ShapeProfile.from_options("a:1x3x8x8,b:1x4", None, "a:2x3x16x16,b:2x4")
    assert two.shapes("opt") == {"a": (1, 3, 8, 8), "b": (1, 4)} and two.shapes("max")["b"] == (2, 4)
    with pytest.raises(ProfileError, match="--max 'a:2x3x16x16': the model's inputs are a, b; missing 'b'"):
        ShapeProfile.from_options("a:1x3x8x8,b:1x4", None, "a:2x3x16x16")
    with pytest.raises(ProfileError, match="give --min"):
        ShapeProfile.from_options(opt="1x3x8x8")
