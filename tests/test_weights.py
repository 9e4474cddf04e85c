"""The pretrained-weights registry, and downloads tested on local files (file:// URLs)."""

import dataclasses
import hashlib
import pathlib

import pytest

import resnet_jax
from resnet_jax import pretrained, weights


def test_registry_covers_torchvision_v1_and_v2():
    tags = {(w.model, w.tag) for w in weights.list_weights()}
    v1 = {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    }  # fmt: skip
    assert {m for m, t in tags if t == "torchvision_v1"} == v1
    assert {m for m, t in tags if t == "torchvision_v2"} == v1 - {"resnet18", "resnet34", "resnext101_64x4d"}
    for w in weights.list_weights():
        assert w.model in resnet_jax.list_models()
        host = {"torchvision": "https://download.pytorch.org/models/", "timm": "https://github.com/"}
        assert w.url.startswith(host[w.source]) and len(w.sha256) == 8
        assert w.num_classes == 1000 and 60 < w.top1 < 90 and w.top1 < w.top5
    assert weights.get_weights("resnet50", "torchvision_v2").top1 == 80.858


def test_unknown_weights_name_the_choices():
    with pytest.raises(
        ValueError, match=r"no weights 'imagenet' for resnet50; valid: torchvision_v1, torchvision_v2"
    ):
        weights.get_weights("resnet50", "imagenet")
    with pytest.raises(
        ValueError, match=r"no pretrained weights for 'resnet20'; models with weights: ecaresnet269d"
    ):
        weights.get_weights("resnet20", "torchvision_v1")


def _local_entry(tmp_path, payload, sha):
    source = tmp_path / "remote" / "w-1234abcd.pth"
    source.parent.mkdir()
    source.write_bytes(payload)
    entry = weights.get_weights("resnet18", "torchvision_v1")
    return dataclasses.replace(entry, url=source.as_uri(), sha256=sha)


def test_fetch_downloads_verifies_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    payload = b"weights" * 1000
    entry = _local_entry(tmp_path, payload, hashlib.sha256(payload).hexdigest()[:8])
    path = pretrained.fetch(entry, progress=False)
    assert pathlib.Path(path).read_bytes() == payload and path.startswith(str(tmp_path / "cache"))
    (tmp_path / "remote" / "w-1234abcd.pth").unlink()  # the cached copy is used from now on
    assert pretrained.fetch(entry, progress=False) == path


def test_fetch_refuses_a_bad_hash_and_keeps_the_cache_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    entry = _local_entry(tmp_path, b"tampered", "00000000")
    with pytest.raises(ValueError, match="does not match the expected 00000000"):
        pretrained.fetch(entry, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    entry = dataclasses.replace(
        weights.get_weights("resnet50", "torchvision_v1"), url="http://127.0.0.1:9/r.pth"
    )
    with pytest.raises(RuntimeError, match=r"Offline\? .*--weights=FILE.*cache/r\.pth"):
        pretrained.fetch(entry, progress=False)


def test_create_model_with_weights_fetches_converts_and_caches(tmp_path, monkeypatch):
    # A stand-in for torchvision's resnet18 file: our own random state dict saved the
    # way torch.save does, registered under the real entry with its hash.
    torch = pytest.importorskip("torch")
    import sys
    import types

    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    tv_models = pytest.importorskip("torchvision.models")
    remote = tmp_path / "remote" / "resnet18-f37072fd.pth"
    remote.parent.mkdir()
    torch.save(tv_models.resnet18().state_dict(), remote)
    entry = dataclasses.replace(
        weights.get_weights("resnet18", "torchvision_v1"),
        url=remote.as_uri(),
        sha256=hashlib.sha256(remote.read_bytes()).hexdigest(),
    )
    monkeypatch.setitem(weights.REGISTRY, ("resnet18", "torchvision_v1"), entry)
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    model, variables = resnet_jax.create_model("resnet18", weights="torchvision_v1")
    assert model.num_classes == 1000 and variables["params"]["head"]["kernel"].shape == (512, 1000)
    # The second call reads the converted Orbax copy: the downloaded file is not needed.
    remote.unlink()
    (tmp_path / "cache" / "resnet18-f37072fd.pth").unlink()
    _, again = resnet_jax.create_model("resnet18", weights="torchvision_v1")
    import jax
    import numpy as np

    jax.tree.map(np.testing.assert_array_equal, again, variables)
    # train's init_from takes the same tag, through the same cache and the same resolver
    # (finetune's own resolver, _load_source, is gone: restore_from calls sources.resolve).
    from train import finetune

    head = variables["params"]["head"]
    params, stats, report = finetune.restore_from(
        "torchvision_v1", variables["params"], variables["batch_stats"], "resnet18"
    )
    assert "resnet18.torchvision_v1" in report and head["kernel"].shape == (512, 1000)
    jax.tree.map(np.testing.assert_array_equal, {"params": params, "batch_stats": stats}, variables)
