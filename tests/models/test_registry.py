import pytest
import torch

from effattn.errors import ModelError
from effattn.models import EfficientAttention, create_model, get_entry, list_models


def test_zoo_lists_blocks_and_both_hosts():
    names = list_models()
    for name in (
        "efficient_attention",
        "efficient_attention_1d",
        "dot_product_attention",
        "ea_resnet_tiny",
        "ea_resnet",
        "ea_segnet_tiny",
        "ea_segnet",
    ):
        assert name in names
    assert list_models("ea_seg*") == ["ea_segnet", "ea_segnet_tiny"]


@pytest.mark.parametrize(
    "name",
    [
        "efficient_attention",
        "efficient_attention_1d",
        "dot_product_attention",
        "ea_resnet_tiny",
        "ea_segnet_tiny",
        "ea_segnet",
    ],
)
def test_models_run_at_their_min_shape_with_expected_output(name):
    entry = get_entry(name)
    shape = entry.profile["input"].min
    model = create_model(name)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(*shape))
    if entry.task == "block":
        assert out.shape == shape
    elif entry.task == "segmentation":
        assert out.shape[0] == shape[0] and out.shape[2:] == shape[2:]
    else:
        assert out.shape[0] == shape[0] and out.dim() == 2


def test_host_networks_accept_non_square_odd_sizes():
    with torch.no_grad():
        assert create_model("ea_segnet_tiny")(torch.randn(2, 3, 37, 50)).shape == (2, 3, 37, 50)
        assert create_model("ea_resnet_tiny")(torch.randn(3, 3, 45, 31)).shape == (3, 10)


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError, match=r"unknown model 'segnet_tiny' \(did you mean ea_segnet_tiny\?\)"):
        create_model("segnet_tiny")


@pytest.mark.parametrize(
    "typo,meant",
    [("ea_segnet_tiyn", "ea_segnet_tiny"), ("ea_resnt", "ea_resnet"), ("ea_resnet_tinny", "ea_resnet_tiny")],
)
def test_a_typo_suggests_the_nearest_spelling_alone(typo, meant):
    with pytest.raises(ModelError, match=rf"unknown model '{typo}' \(did you mean {meant}\?\)"):
        create_model(typo)


def test_a_user_factory_is_not_called_unknown():
    with pytest.raises(
        ModelError,
        match=r"'pkg.mod:make' is a user factory \(package.module:factory\), not a "
        "registered name: effattn.models.load_model builds it",
    ):
        get_entry("pkg.mod:make")  # zoo look-ups take zoo names; building takes both:
    assert isinstance(create_model("tests.conftest:make_user_model", channels=4)[1], EfficientAttention)
    with pytest.raises(ModelError, match=r"cannot import module 'pkg.mod' for model 'pkg.mod:make'"):
        create_model("pkg.mod:make")


def test_an_error_inside_a_users_factory_says_it_is_the_factorys(tmp_path, monkeypatch):
    (tmp_path / "broken_nets.py").write_text("def build(width=4):\n    return width + None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ModelError,
        match=r"'broken_nets:build' failed while building with arguments {}: TypeError: "
        r".*\(raised inside the factory\)",
    ):
        create_model("broken_nets:build")
    with pytest.raises(ModelError, match=r"does not take the arguments {'depth': 2}.*signature is build\(width=4\)"):
        create_model("broken_nets:build", depth=2)


def test_bad_factory_arguments_name_them():
    with pytest.raises(ModelError, match=r"does not take the arguments \{'channels': 3\}"):
        create_model("ea_segnet_tiny", channels=3)


def test_pretrained_only_where_weights_ship():
    with pytest.raises(ModelError, match="has no pretrained weights; models with weights: ea_segnet_tiny"):
        create_model("ea_resnet_tiny", pretrained=True)
