"""0.1's names keep working for one release, warn with the new name, and give the same
results; passing an old and a new name together is an error."""

from __future__ import annotations

import pytest
import torch

import attnviz
from attnviz import analysis, train, zoo
from attnviz.models import STCNN, small_resnet


@pytest.mark.parametrize(
    "old, new",
    [
        ("register", "register_attention_type"),
        ("register_attention", "attention_type"),
        ("unregister", "unregister_attention_type"),
        ("registered", "list_attention_types"),
        ("refuse", "refuse_attention_type"),
        ("register_layer", "register_attention_layer"),
        ("attention_layers", "list_attention_layers"),
        ("make_attention", "get_attention_layer"),
    ],
)
def test_old_registry_names_warn_and_are_the_new_functions(old, new):
    with pytest.warns(FutureWarning, match=f"'{old}' was renamed '{new}'"):
        assert getattr(attnviz, old) is getattr(attnviz, new)


def test_unknown_attributes_still_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'registr'"):
        attnviz.registr  # noqa: B018


def test_old_module_functions_warn():
    with pytest.warns(FutureWarning, match="'predict' was renamed 'top_classes'"):
        assert zoo.predict is zoo.top_classes
    with pytest.warns(FutureWarning, match="'predict' was renamed 'logits'"):
        assert train.predict is train.logits


def test_old_keywords_give_the_same_records():
    torch.manual_seed(0)
    model = small_resnet(attention="cbam", width=8, num_classes=3)
    x = torch.rand(2, 3, 32, 32)
    with attnviz.capture(model, blocks="layer2.*", records_on=None) as new:
        model(x)
    with pytest.warns(FutureWarning) as warned:
        with attnviz.capture(model, names="layer2.*", device=None) as old:
            model(x)
    said = [str(w.message) for w in warned]
    assert any("'names' was renamed 'blocks'" in m for m in said)
    assert any("'device' was renamed 'records_on'" in m for m in said)
    assert all(w.filename == __file__ for w in warned)  # points at the caller's line
    assert list(old) == list(new) and len(new) > 0
    for name in new:
        assert torch.equal(old[name].data, new[name].data)
    with pytest.warns(FutureWarning, match="'name' was renamed 'blocks'"):
        assert old.select(name="*spatial*") == old.select(blocks="*spatial*")
    with pytest.raises(TypeError, match="pass blocks= only"):
        attnviz.capture(model, blocks="layer2.*", names="layer2.*")


def test_old_classes_argument_is_split_into_num_classes_and_class_names():
    torch.manual_seed(0)
    model = small_resnet(attention="se", width=8, num_classes=3)
    x, y = torch.rand(6, 3, 32, 32), [0, 1, 2, 0, 1, 2]
    new = analysis.channel_stats(model, x, y, class_names=["a", "b", "c"])
    with pytest.warns(FutureWarning, match="pass class_names="):
        old = analysis.channel_stats(model, x, y, classes=["a", "b", "c"])
    assert old.class_names == new.class_names == ["a", "b", "c"]
    for name in new.mean:
        assert torch.equal(old.mean[name], new.mean[name])
    with pytest.raises(TypeError, match="num_classes="):
        analysis.channel_stats(model, x, y, class_names=3)
    with pytest.raises(ValueError, match="num_classes=4 but 3 class_names"):
        analysis.channel_stats(model, x, y, num_classes=4, class_names=["a", "b", "c"])


def test_old_model_keywords():
    with pytest.warns(FutureWarning) as warned:
        model = STCNN(input_size=(16, 16), output_size=(12, 12), classes=2, width=4)
    assert {str(w.message).split("'")[1] for w in warned} == {"input_size", "classes"}
    assert model(torch.rand(1, 1, 16, 16)).shape == (1, 2)


def test_pretrained_categories_is_class_names():
    pre = zoo.pretrained("mobilenet_v3_small", weights=None)
    with pytest.warns(FutureWarning, match="'categories' was renamed 'class_names'"):
        assert pre.categories == pre.class_names
