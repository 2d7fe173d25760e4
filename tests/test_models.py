import numpy as np
import pytest
import torch

from engine.errors import LatentSRError
from engine.grid import Grid, centres, output_size
from engine.latent import band_groups
from engine.methods import MethodOptions, build_method, from_bundle
from engine.models import KINDS, build, preset
from engine.models.sampling import Plan
from engine.resample import cubic_resample
from engine.tiling import axis_plan, required_margin
from training.bundle import random_bundle, write

SCALES = (1.3, 2.0, 2.5, 3.7, 4.0, 8.0)


@pytest.fixture(scope="module")
def bundle():
    return random_bundle("tiny", seed=0)


@pytest.fixture(scope="module")
def model_dir(bundle, tmp_path_factory):
    return str(write(tmp_path_factory.mktemp("models") / "tiny", *bundle))


def lr(c=3, h=23, w=17, seed=0):
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["regression", "lcmsr", "e2diffsr"])
def test_output_size_for_any_scale_and_odd_input(bundle, name, scale):
    method = from_bundle(name, *bundle, device="cpu")
    x = lr(h=23, w=17)
    grid = Grid.whole(23, 17, scale)
    out = method(x, grid)
    assert out.shape == (3, output_size(23, scale), output_size(17, scale))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_plan_covers_the_tile_and_aligns_the_latent():
    grid = Grid(centres(100, 250, 40, 90, 10), centres(60, 150, 0, 150), 2.5, out_y0=40, in_y0=10)
    plan = Plan.build(30, 60, grid, 4)
    h_lat, w_lat = plan.latent_shape
    assert h_lat % 4 == 0 and w_lat % 4 == 0 and plan.rows.cells[0] % 4 == 0
    # the latent covers every output row centred on the 30 LR rows: global rows 25..99
    assert plan.rows.cells[0] <= 25 // 8 and plan.rows.cells[-1] >= 99 // 8
    assert plan.rows.hr_idx.shape == (4, 8 * h_lat)
    assert plan.rows.out_idx.shape == (13, 50) and plan.rows.lat_idx.shape == (2, 30)
    assert plan.rows.out_idx[:12].max() < 30 * 8 and plan.rows.out_idx.min() >= 0
    # the detail row: requested global rows 40..89 on the latent-aligned HR grid, which starts at row 8·first
    np.testing.assert_array_equal(plan.rows.out_idx[12], np.arange(40, 90) - 8 * plan.rows.cells[0])
    np.testing.assert_array_equal(plan.rows.out_w[12], 1)


def test_decoder_skip_is_the_engine_bicubic():
    torch.manual_seed(0)
    dec = build("decoder", preset("tiny", "decoder"))
    for layer in (dec.tail[-1], dec.detail):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    x = lr(h=13, w=11)
    grid = Grid.whole(13, 11, 3.7)
    t = Plan.build(13, 11, grid, 1).tensors("cpu")
    z = torch.randn(1, 16, *Plan.build(13, 11, grid, 1).latent_shape)
    with torch.no_grad():
        out = dec(torch.from_numpy(x)[None], z, torch.tensor([[1 / 3.7]]), t["out_y_idx"], t["out_y_w"], t["out_x_idx"],
                  t["out_x_w"], t["lat_y_idx"], t["lat_y_w"], t["lat_x_idx"], t["lat_x_w"])[0].numpy()
    np.testing.assert_allclose(out, cubic_resample(x, grid.ys, grid.xs), atol=1e-5)


def test_network_shapes():
    torch.manual_seed(0)
    enc = build("encoder", preset("tiny", "encoder"))
    assert enc(torch.rand(2, 3, 64, 32), torch.rand(2, 3, 64, 32)).shape == (2, 16, 8, 4)
    den = build("denoiser", preset("tiny", "denoiser"))
    assert den.multiple == 4
    z = torch.randn(2, 16, 12, 8)
    assert den(z, z, torch.rand(2, 1), torch.rand(2, 1)).shape == z.shape
    # the default sizes, as docs/MODELS.md lists them
    counts = {"encoder": 331_392, "decoder": 329_627, "condition": 192_208, "denoiser": 1_658_128}
    assert set(counts) == set(KINDS)
    for kind, count in counts.items():
        assert sum(p.numel() for p in build(kind, preset("default", kind)).parameters()) == count


def test_seeds(model_dir):
    x = lr()
    grid = Grid.whole(23, 17, 2.5)

    def run(name, seed):
        return build_method(name, MethodOptions(model=model_dir))(x, grid, seed)

    for name in ("e2diffsr", "lcmsr"):
        method = build_method(name, MethodOptions(model=model_dir))
        decoder, latents = method.nets.decoder, []

        def capture(inputs):  # the sampled latent, before the decoder (which, random and tiny, barely listens to it)
            latents.append(inputs.z.numpy().copy())
            return decoder(inputs)

        method.nets.decoder = capture
        a, b, c = method(x, grid, 1), method(x, grid, 1), method(x, grid, 2)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(latents[0], latents[1])
        # another seed, another sample: the latents differ as much as they are large (0 if the seed were ignored)
        assert np.abs(latents[0] - latents[2]).mean() > 0.25 * np.abs(latents[0]).mean()
        assert np.abs(a - c).max() > 0
        assert not method.deterministic
    np.testing.assert_array_equal(run("regression", 1), run("regression", 2))
    assert build_method("regression", MethodOptions(model=model_dir)).deterministic


def test_steps(model_dir):
    x, grid = lr(), Grid.whole(23, 17, 2.0)
    one = build_method("lcmsr", MethodOptions(steps=1, model=model_dir))
    two = build_method("lcmsr", MethodOptions(steps=2, model=model_dir))
    assert one.steps == 1 and build_method("e2diffsr", MethodOptions(model=model_dir)).steps == 4
    latents = []
    for method in (one, two):  # the sampled latents (the random tiny decoder barely listens to them)
        decoder = method.nets.decoder
        method.nets.decoder = lambda inputs, decoder=decoder: latents.append(inputs.z.numpy().copy()) or decoder(inputs)
        method(x, grid)
    assert np.abs(latents[0] - latents[1]).mean() > 0.1 * np.abs(latents[0]).mean()
    for name, steps in (("lcmsr", 5), ("e2diffsr", 5), ("e2diffsr", 0)):
        with pytest.raises(LatentSRError, match="steps must be between"):
            build_method(name, MethodOptions(steps=steps, model=model_dir))


def test_band_groups():
    assert band_groups(3, 3) == [[0, 1, 2]]
    assert band_groups(1, 3) == [[0, 0, 0]]
    assert band_groups(4, 3) == [[0, 1, 2], [3, 3, 3]]
    assert band_groups(5, 3) == [[0, 1, 2], [3, 4, 3]]


def test_other_band_counts(model_dir):
    method = build_method("regression", MethodOptions(model=model_dir))
    x4 = lr(c=4)
    grid = Grid.whole(23, 17, 2.0)
    out = method(x4, grid)
    assert out.shape == (4, 46, 34)
    np.testing.assert_allclose(out[:3], method(x4[:3], grid), atol=1e-6)
    np.testing.assert_allclose(out[3:], method(x4[3:], grid), atol=1e-6)
    assert method(x4[:2], grid).shape == (2, 46, 34)


def test_user_errors(model_dir, monkeypatch):
    with pytest.raises(LatentSRError, match="has no ONNX graphs: run `python -m training export-onnx"):
        build_method("lcmsr", MethodOptions(backend="onnx", model=model_dir))
    with pytest.raises(LatentSRError, match="no bundled model 'nothing-here'"):
        build_method("lcmsr", MethodOptions(model="nothing-here"))
    with pytest.raises(LatentSRError, match="unknown device"):
        build_method("lcmsr", MethodOptions(device="tpu", model=model_dir))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LatentSRError, match="device 'cuda'"):
        build_method("lcmsr", MethodOptions(device="cuda", model=model_dir))
    assert build_method("lcmsr", MethodOptions(device="auto", model=model_dir)).nets.device.type == "cpu"


def tiled_run(x, scale, method_for_tile, tile=(40, 36), overlap=24, context=16):
    """Overlapping tiles blended as the engine's tiler does (engine.tiling weights)."""
    _, h, w = x.shape
    h_out, w_out = output_size(h, scale), output_size(w, scale)
    margin = required_margin(context, overlap)
    rows, cols = axis_plan(h, h_out, tile[0], overlap, margin), axis_plan(w, w_out, tile[1], overlap, margin)
    assert len(rows) > 1 and len(cols) > 1
    out = np.zeros((x.shape[0], h_out, w_out), dtype=np.float32)
    for iy, ty in enumerate(rows):
        for ix, tx in enumerate(cols):
            grid = Grid(centres(h, h_out, ty.out_start, ty.out_stop, ty.in_start),
                        centres(w, w_out, tx.out_start, tx.out_stop, tx.in_start),
                        scale, ty.out_start, tx.out_start, ty.in_start, tx.in_start)
            sr = method_for_tile(iy, ix)(x[:, ty.in_start:ty.in_stop, tx.in_start:tx.in_stop], grid)
            out[:, ty.out_start:ty.out_stop, tx.out_start:tx.out_stop] += sr * ty.weights[:, None] * tx.weights[None]
    return out


@pytest.mark.parametrize("name", ["e2diffsr", "lcmsr"])
def test_tiled_run_has_no_seams(bundle, name):
    method = from_bundle(name, *bundle, device="cpu")
    x = lr(h=64, w=56, seed=3)
    whole = method(x, Grid.whole(64, 56, 2.5), 5)
    tiled = tiled_run(x, 2.5, lambda iy, ix: lambda t, g: method(t, g, 5), context=method.halo(2.5))
    assert np.abs(tiled - whole).max() < 5e-4


def test_noise_drawn_per_tile_would_show_seams(bundle):
    """The control of the seam test: a seed per tile instead of noise per global position."""
    method = from_bundle("e2diffsr", *bundle, device="cpu")
    x = lr(h=64, w=56, seed=3)
    whole = method(x, Grid.whole(64, 56, 2.5), 5)

    def method_for_tile(iy, ix):
        return lambda t, g: method(t, g, 100 + 10 * iy + ix)

    assert np.abs(tiled_run(x, 2.5, method_for_tile, context=method.halo(2.5)) - whole).max() > 5e-3


def test_pca_of_known_blocks():
    """pca finds the mean, orthonormal directions by falling spread, and their standard deviations."""
    from engine.models.encoder import pca

    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0].T  # orthonormal rows
    spread = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    rows = (torch.randn(20000, 6, generator=g, dtype=torch.float64) * spread) @ basis + 7.0
    mean, components, std = pca(rows.float(), 3)
    torch.testing.assert_close(mean, torch.full((6,), 7.0), atol=0.1, rtol=0)
    torch.testing.assert_close(components @ components.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, spread[:3].float(), rtol=0.03, atol=0)
    alignment = (components.double() @ basis[:3].T).abs()  # each direction found up to its sign
    torch.testing.assert_close(alignment, torch.eye(3, dtype=torch.float64), atol=0.03, rtol=0)


def test_full_rank_pca_latent_decodes_the_hr():
    """With as many latent channels as values per 8×8 block, the PCA analysis (encoder) and synthesis
    (the decoder's detail path) invert each other: decoding the true latent of a decoder whose other
    paths give bicubic returns the HR exactly, at a continuous scale (the detail row's alignment)."""
    from engine.models.encoder import pca, residual_blocks
    from training.batch import make_pair

    torch.manual_seed(0)
    enc = build("encoder", preset("tiny", "encoder", bands=1, latent=64))
    dec = build("decoder", preset("tiny", "decoder", bands=1, latent=64))
    for layer in (enc.out, dec.tail[-1]):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    pairs = [make_pair(torch.rand(2, 1, 64, 64), s, 1) for s in (2.0, 3.3)]
    basis = pca(torch.cat([residual_blocks(p.hr, p.lr_up) for p in pairs]), 64)
    enc.set_analysis(*basis)
    dec.set_detail(*basis)
    pair = make_pair(torch.rand(2, 1, 64, 64), 2.7, 1)
    with torch.no_grad():
        sr = dec(*pair.decoder_inputs(enc(pair.hr, pair.lr_up)))
    torch.testing.assert_close(sr, pair.hr, atol=1e-4, rtol=0)


@pytest.mark.parametrize("flat", [False, True])
def test_detail_path_is_seamless(flat):
    """The detail path's map is cut on the global 8×8 grid: on a tile it gives exactly the rows of the
    whole image's map, for a latent that is the same function of the global cell in both. The flat
    path (detail_flat) is the same 3×3 conv on the global cells, so the halo of engine.reach needs
    nothing more for it."""
    torch.manual_seed(0)
    dec = build("decoder", dict(preset("tiny", "decoder"), detail_flat=flat))
    torch.nn.init.normal_(dec.detail.weight)
    field = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 16, 40, 40), dtype=np.float32))
    whole = Grid.whole(40, 32, 2.5)
    tile = Grid(whole.ys[37:81] - 6, whole.xs, 2.5, out_y0=37, in_y0=6)
    outs = []
    for grid, h, rows in ((whole, 40, slice(37, 81)), (tile, 30, slice(None))):
        plan = Plan.build(h, 32, grid, 1)
        z = field[:, :, plan.rows.cells][:, :, :, plan.cols.cells]
        t = plan.tensors("cpu")
        with torch.no_grad():
            outs.append(dec.detail_map(z, t["out_y_idx"], t["out_y_w"], t["out_x_idx"], t["out_x_w"])[:, rows])
    assert outs[1].shape[1] == 44 and outs[0].abs().mean() > 0.1
    # the 3×3 conv sees other cells at the tile's latent border: compare rows whose cells have both neighbours
    torch.testing.assert_close(outs[0][:, 8:-8], outs[1][:, 8:-8])


def test_discriminator_and_hinge_losses():
    """The PatchGAN gives one logit per patch; the hinge losses are zero only past the margins."""
    from engine.models.discriminator import Discriminator
    from training.gan import hinge_discriminator, hinge_generator

    disc = Discriminator(3, (8, 8, 8))
    assert disc(torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)).shape == (2, 1, 15, 11)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert hinge_discriminator(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_discriminator(torch.ones(3) * 1.5, -torch.ones(3) * 1.5).item() == 0
    assert hinge_generator(fake).item() == pytest.approx(1.5)
