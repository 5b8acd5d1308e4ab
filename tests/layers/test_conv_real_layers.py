"""Convolutions of real networks (data/conv_layers.json) at reduced sizes: forward and weight VJP vs torch."""

from __future__ import annotations

import pytest
import torch
from cases.conv_cases import load_real_layers, reduce_real_layer
from cases.torch_oracles import ConvConfig, conv_oracle, output_grads

import tnderiv

LAYERS = load_real_layers()
IDS = [f"{layer['net']}.{layer['name']}" for layer in LAYERS]


def test_the_data_file_is_the_projects_copy() -> None:
    assert len(LAYERS) >= 30
    categories = {layer["category"] for layer in LAYERS}
    assert {"general", "dense", "downsampling", "depthwise", "mixed", "transposed"} <= categories


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_real_layer(layer: dict) -> None:
    cfg: ConvConfig = reduce_real_layer(layer)
    if layer["groups"] == layer["in_channels"] > 1:
        assert cfg.groups == cfg.in_channels > 1, "depthwise structure lost in the reduction"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.x_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(cfg.weight_shape, generator=gen, dtype=torch.float64)
    b = torch.randn(cfg.out_channels, generator=gen, dtype=torch.float64) if cfg.bias else None
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    expected = conv_oracle(cfg, x, w, b)
    torch.testing.assert_close(tnderiv.forward(spec, x, w, b), expected, rtol=1e-10, atol=1e-10)
    g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    (gw,) = output_grads(lambda w_: conv_oracle(cfg, x, w_, b), (w,), g)
    torch.testing.assert_close(tnderiv.vjp(spec, "weight", g, x=x), gw, rtol=1e-10, atol=1e-10)
