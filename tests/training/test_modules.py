"""The inference modules: masking in the fusion, checkpoints, pretrained ResNet-18 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from musecl_store.nn.fusion import BRANCHES, AttentiveFusion, ModalityFusion
from musecl_store.nn.model import CheckpointError, MuseclNet
from musecl_store.nn.resnet import ImageEncoder, PretrainedWeightsError, load_backbone
from training.config import ConfigError, TrainConfig


def test_a_missing_modality_gets_exactly_zero_attention() -> None:
    torch.manual_seed(0)
    fusion = AttentiveFusion(dim=16, text_dim=8)
    emb = torch.randn(4, 2, 16) * 50  # large values must not leak through the mask
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    fused, alpha = fusion(emb, mask)
    assert alpha[1, 1].item() == 0.0 and alpha[2, 0].item() == 0.0
    assert torch.allclose(alpha.sum(1), torch.ones(4))
    # a region with one modality is exactly that modality's (mapped) embedding
    only, _ = fusion(emb[1:2], torch.tensor([[True, False]]))
    assert torch.allclose(fused[1], only[0])
    emb2 = emb.clone()
    emb2[1, 1] = torch.randn(16) * 1000  # the masked-out input does not matter at all
    fused2, _ = fusion(emb2, mask)
    assert torch.equal(fused2[1], fused[1])
    with pytest.raises(ValueError, match="none of the visual modalities"):
        fusion(emb[:1], torch.tensor([[False, False]]))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = MuseclNet(dim=32, text_dim=16, vocabulary=["bar", "cafe"], stem="small")
    path = net.save(tmp_path / "run" / "model.pt", {"dim": 32, "seed": 0})
    loaded, config = MuseclNet.load(path)
    assert config == {"dim": 32, "seed": 0}
    assert loaded.vocabulary == ["bar", "cafe"] and loaded.stem == "small"
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    assert torch.allclose(net.encoders["remote"](x), loaded.encoders["remote"](x))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read model file"):
        MuseclNet.load(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        MuseclNet.load(tmp_path / "nope.pt")


def test_pretrained_resnet18_weights_load_by_their_usual_names(tmp_path: Path) -> None:
    source = ImageEncoder(8)
    # What a torchvision-style checkpoint looks like: backbone keys at top level + fc.
    state = {k: v.clone() for k, v in source.backbone.state_dict().items()}
    assert {
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer4.1.bn2.running_var",
        "layer2.0.downsample.0.weight",
        "layer4.0.downsample.1.bias",
    } <= set(state)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    target = ImageEncoder(8)
    loaded = load_backbone(target, tmp_path / "resnet18.pth")
    assert len(loaded) == len(state) - 2
    assert torch.equal(
        target.backbone.layer3[1].conv2.weight, source.backbone.layer3[1].conv2.weight
    )

    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(
        PretrainedWeightsError, match=r"wrong shape.*layer1\.0\.conv1\.weight \(64, 64, 5, 5\)"
    ):
        load_backbone(ImageEncoder(8), tmp_path / "bad.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="not a ResNet-18 checkpoint"):
        load_backbone(ImageEncoder(8), tmp_path / "other.pth")


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) epoch; valid keys are seed, dim"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="similarity"):
        TrainConfig(similarity={"remote": "weather"})
    (tmp_path / "c.json").write_text('{"epochs": 2, "margin": 1.0}')
    cfg = TrainConfig.from_file(tmp_path / "c.json", seed=5)
    assert (cfg.epochs, cfg.margin, cfg.seed) == (2, 1.0, 5)
    (tmp_path / "bad.json").write_text('{"epochs": 2,}')
    with pytest.raises(ConfigError, match=r"bad\.json:1: invalid JSON"):
        TrainConfig.from_file(tmp_path / "bad.json")


def test_all_branch_fusion_masks_missing_branches_exactly() -> None:
    torch.manual_seed(0)
    dims = (8, 8, 12, 5, 6)
    fusion = ModalityFusion(dims, 8)
    xs = [torch.randn(4, d) for d in dims]
    mask = torch.ones(4, len(BRANCHES), dtype=torch.bool)
    mask[1, 0] = mask[2, 2] = mask[3, 4] = False
    fused, alpha = fusion(xs, mask)
    assert torch.all(alpha[~mask] == 0)
    torch.testing.assert_close(alpha.sum(1), torch.ones(4))
    # whatever a missing branch's input holds, the fused vector does not move
    xs2 = [x.clone() for x in xs]
    xs2[0][1] = 1e6
    xs2[2][2] = float("nan")
    fused2, _ = fusion([torch.nan_to_num(x, nan=3.0) for x in xs2], mask)
    torch.testing.assert_close(fused2[1:], fused[1:])
    with pytest.raises(ValueError, match="no evidence"):
        fusion(xs, torch.zeros(4, len(BRANCHES), dtype=torch.bool))


def test_branch_normalisation_keeps_the_level_of_counts() -> None:
    """Standardised per column, not per row: a region with twice the POIs of every kind is
    not the same as the original (a per-row layer norm would make them equal)."""
    torch.manual_seed(0)
    fusion = ModalityFusion((4, 4, 4, 3, 6), 8)
    rows = torch.rand(50, 3) * 3
    xs = [torch.randn(50, d) for d in (4, 4, 4)] + [rows, torch.randn(50, 6)]
    mask = torch.ones(50, 5, dtype=torch.bool)
    fusion.set_normalisation(xs, mask)
    branch = fusion.branches[3]
    torch.testing.assert_close(branch.shift, rows.mean(0))
    doubled = [x.clone() for x in xs]
    doubled[3] = rows * 2
    assert not torch.allclose(fusion(doubled, mask)[0], fusion(xs, mask)[0])


def test_format_2_model_files_still_load(tmp_path: Path) -> None:
    """A model trained before the all-branch fusion (its visual fusion saved as `fusion`)
    loads, with the visual fusion in place and no all-branch fusion."""
    torch.manual_seed(0)
    net = MuseclNet(16, 24)
    state = {
        (f"fusion.{k[len('fusion_visual.') :]}" if k.startswith("fusion_visual.") else k): v
        for k, v in net.state_dict().items()
    }
    path = tmp_path / "old.pt"
    torch.save({"format": 2, "dim": 16, "text_dim": 24, "config": "{}", "state_dict": state}, path)
    loaded, _ = MuseclNet.load(path)
    assert loaded.fusion is None and loaded.vocabulary is None
    for k, v in net.fusion_visual.state_dict().items():
        torch.testing.assert_close(loaded.fusion_visual.state_dict()[k], v)
