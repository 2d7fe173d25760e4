"""Seams: the halo each learned method gets follows its receptive field (engine.reach), so a tiled run
of the bundled model equals an untiled one at every method, scale and detail with the default overlap."""
import numpy as np
import pytest
import torch
from osgeo import gdal

from engine import modelfile, reach
from engine.grid import Grid
from engine.methods import DEFAULTS, MethodOptions, RunOptions, build_method
from engine.models.decoder import Decoder
from engine.models.sampling import Plan
from engine.pipeline import Request, superresolve
from engine.tiling import axis_plan, required_margin
from tests.conftest import NAIP, read

CROP = (0, 0, 176, 112)  # x, y, w, h on the NAIP tile
TILE = 80  # 3 × 2 tiles on the crop (the default 256 would make it one)


@pytest.fixture(scope="module")
def naip_crop(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("seams") / "crop.tif")
    gdal.Translate(path, NAIP, srcWin=list(CROP), bandList=[1, 2, 3])
    return path


@pytest.mark.parametrize("detail", [0.0, None, 1.0], ids=["D0", "Ddefault", "D1"])
@pytest.mark.parametrize("scale", [2.0, 3.3, 4.0])
@pytest.mark.parametrize("name", ["lcmsr", "e2diffsr"])
def test_tiled_equals_untiled_with_the_default_overlap(naip_crop, tmp_path, name, scale, detail):
    """The bundled model on a 176×112 NAIP crop, default overlap (32) and backend, a smaller tile
    (80, so that the crop makes 3 × 2 tiles; at ×2 and D > 0 the halo, 52 LR pixels, reaches over
    the crop's height, so there the vertical seams are the ones tested) against one tile over the
    whole crop. A 1-DN step can come from any float difference across a rounding boundary, so the
    share of pixels that differ (the mean difference in DN) is bounded too. With the fixed 16-pixel
    halo before engine.reach, E²DiffSR at D = 1 differed by 2 DN, on 1.2–3.2 % of the pixels, and
    at ×2 and the default D on 0.8 %; with engine.reach's halo every case is within 1 DN, on 0.11 %
    of the pixels at most. The 2026-12-03 bundle's synthesis also needs each tile's output widened
    (engine.reach.output_margin): without it, up to 13 DN at D = 0; with it, 0.05 % of the pixels
    at most. The second 2026-12-05 bundle's E²DiffSR at ×3.3 and D = 1 differs by 1 DN on 0.57 % of
    the pixels (seeds 5 and 6), inside the blend zones; with an overlap of 48 instead of 32 on 0.86–0.94 %:
    more context does not lower it, more blended pixels raise it, so these are the two tiles' float
    differences rounding to the other side, not a halo short of the receptive field, and the share is
    bounded at 1 %. The fifth 2026-12-05 bundle's E²DiffSR carried a tile's edge further into its
    sampled latent: with the 6-cell edge of the bundles before it gave 2 DN at ×4 (D = 1 and the
    default); with the edges its card measured (training.reach: 14 cells at 4 steps) every E²DiffSR
    case is within 1 DN, on 0.06 % of the pixels at most (seeds 5 and 6)."""
    outputs = []
    for tile, overlap in ((max(CROP[2:]) + 1, 0), (TILE, DEFAULTS.overlap)):
        out = str(tmp_path / f"{tile}.tif")
        result = superresolve(Request(input=naip_crop, output=out, scale=scale, tile=tile, overlap=overlap,
                                      options=RunOptions(method=name, detail=detail, seed=5)))
        outputs.append(read(out)[0].astype(np.int16))
    assert result.tiles == 6
    diff = np.abs(outputs[1] - outputs[0])
    assert diff.max() <= 1
    assert diff.mean() <= 0.01


def test_halo_follows_scale_detail_and_steps():
    """The decoder's reach at D = 0; at D > 0 the guide's and the sampled latent's edge that the card
    measured (training.reach) for the method's steps, in cells of 8/scale LR pixels."""
    card = modelfile.read_card(modelfile.resolve(None))
    decoder = card.networks[card.decoder].config
    assert reach.decoder_reach(decoder) == 14  # 4 guided blocks and the output-resolution synthesis
    assert reach.output_margin(decoder) == 2
    assert [reach.method_halo(decoder, s, None) for s in (2, 3.3, 4, 8)] == [14] * 4
    assert [reach.method_halo(decoder, s, 6) for s in (2, 3.3, 4, 8)] == [50, 36, 32, 23]  # + 9 cells of 8/scale
    e2 = card.methods["e2diffsr"]
    assert len(e2.sample_edge) == e2.max_steps
    for steps in (1, e2.max_steps):
        d1 = build_method("e2diffsr", MethodOptions(detail=1.0, steps=steps))
        assert d1.halo(2.0) == reach.method_halo(decoder, 2.0, e2.edge(steps))
    assert build_method("e2diffsr", MethodOptions(detail=0.0)).halo(2.0) == 14
    assert build_method("regression").halo(2.0) == 14


@pytest.mark.parametrize("blocks,synth,scale", [(1, 0, 2.5), (2, 0, 2.5), (4, 0, 2.5), (2, 4, 1.0), (2, 4, 2.5)])
def test_decoder_reach_bounds_what_an_output_pixel_reads(blocks, synth, scale):
    """Perturb one LR column of a random decoder (latent fixed): every output column that changes lies
    within decoder_reach of it, and the farthest is at most 2 pixels short of it (the bound is tight).
    With the output-resolution synthesis (its last conv drawn: a fresh one adds nothing) the reach
    grows by its 2 output pixels, 2 LR pixels at ×1, where the bound is tight; at ×2.5 it is 0.8."""
    torch.manual_seed(blocks)
    config = {"bands": 3, "latent": 4, "channels": 8, "blocks": blocks, "up_channels": 4, "tail_channels": 4,
              "emb_dim": 8, "detail": True, **({"synth": synth} if synth else {})}
    net = Decoder(**config).eval()
    if synth:
        torch.nn.init.normal_(net.synth[-1].weight, std=0.2)
        assert reach.decoder_reach(config) == reach.decoder_reach(dict(config, synth=0)) + reach.SYNTH_REACH
    w, j = 64, 32
    grid = Grid.whole(8, w, scale)
    plan = Plan.build(8, w, grid, 1)
    a = plan.tensors("cpu")
    z = torch.randn(1, 4, *plan.latent_shape)
    lr = torch.rand(1, 3, 8, w)
    bumped = lr.clone()
    bumped[..., j] += 1.0

    def run(x):
        with torch.no_grad():
            return net(x, z, torch.full((1, 1), 1 / scale), *(a[k] for k in (
                "out_y_idx", "out_y_w", "out_x_idx", "out_x_w", "lat_y_idx", "lat_y_w", "lat_x_idx", "lat_x_w")))

    changed = (run(bumped) - run(lr)).abs().amax(dim=(0, 1, 2)) > 0
    pos = grid.xs[changed.numpy()]  # LR coordinates of the output columns that changed
    far = np.abs(pos - j).max() + 0.5  # to the far edge of the output pixel's LR position
    assert far <= reach.decoder_reach(config)
    assert far >= reach.decoder_reach(config) - (2 if not synth or scale == 1.0 else 2 + reach.SYNTH_REACH)


def test_a_halo_wider_than_half_the_overlap_widens_the_reads():
    """axis_plan's halo widens each read within the input and changes nothing else; through the
    pipeline's tile plan a method sees its whole context beyond every pixel it is trusted on."""
    n_in, n_out, tile, overlap, context = 500, 1000, 96, 32, 40
    margin = required_margin(context, overlap)
    plain = axis_plan(n_in, n_out, tile, overlap, margin)
    wide = axis_plan(n_in, n_out, tile, overlap, margin, halo=context - int(margin))
    assert len(plain) == len(wide) > 2
    for p, t in zip(plain, wide):
        assert (t.out_start, t.out_stop) == (p.out_start, p.out_stop) and np.array_equal(t.weights, p.weights)
        assert (t.in_start, t.in_stop) == (max(0, p.in_start - 24), min(n_in, p.in_stop + 24))
        used = (np.arange(t.out_start, t.out_stop)[t.weights > 0] + 0.5) * n_in / n_out
        if t.in_start > 0:
            assert (used - t.in_start >= context).all()
        if t.in_stop < n_in:
            assert (t.in_stop - used >= context).all()
