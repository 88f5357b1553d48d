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
