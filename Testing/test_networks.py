"""Networks: the paper's configuration and smaller grids, from config."""

import pytest
import torch

from SkullVAECompletionLib.errors import BundleError
from SkullVAECompletionLib.model.networks import AggregatedVAE, DecoupledDecoder, NetworkConfig, build_stage1_vae


def test_paper_configuration_is_constructible_from_config():
    config = NetworkConfig.from_dict(
        {"grid": [256, 256, 128], "latent_size": 32, "channels": [32, 64, 64, 128, 128, 256], "strides": [2] * 6}
    )
    assert config.bottleneck_shape == (4, 4, 2)
    decoder = DecoupledDecoder(config)
    assert decoder.linear.out_features == 256 * 4 * 4 * 2
    transposed = [m for m in decoder.blocks if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [m.out_channels for m in transposed] == [128, 128, 64, 64, 32, 2]
    vae = build_stage1_vae(config)
    assert vae.mu.out_features == 32


def test_paper_decoder_output_shape_on_meta_device():
    config = NetworkConfig()
    with torch.device("meta"):
        decoder = DecoupledDecoder(config)
        logits = decoder(torch.zeros(1, 32))
    assert tuple(logits.shape) == (1, 2, 256, 256, 128)


def test_small_grid_forward_shapes():
    config = NetworkConfig(grid=(32, 40, 32), latent_size=8, channels=(8, 16, 32), strides=(2, 2, 2))
    model = AggregatedVAE(config).eval()
    x = torch.rand(2, 1, 32, 40, 32)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (2, 8)
        assert model.decode(mu).shape == (2, 2, 32, 40, 32)
        assert model.decode_stage1(mu).shape == (2, 2, 32, 40, 32)
        logits, mu1, _, z = model.vae(x)
        assert logits.shape == (2, 2, 32, 40, 32) and z.shape == (2, 8)


def test_config_round_trip_and_errors():
    config = NetworkConfig(grid=(32, 40, 32), latent_size=8, channels=(8, 16, 32), strides=(2, 2, 2))
    assert NetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(BundleError, match="not divisible"):
        NetworkConfig(grid=(30, 40, 32), channels=(8, 16, 32), strides=(2, 2, 2))
    with pytest.raises(BundleError, match="one stride per level"):
        NetworkConfig(grid=(32, 32, 32), channels=(8, 16), strides=(2, 2, 2))
    with pytest.raises(BundleError, match="unknown network config keys"):
        NetworkConfig.from_dict({"grid": [32, 32, 32], "colour": "red"})
