"""The tiled raster pipeline: geometry, georeferencing, types, nodata, seams, clean failure."""
import math
import os

import numpy as np
import pytest
from osgeo import gdal

from engine.errors import Cancelled, LatentSRError
from engine.methods import RunOptions
from engine.pipeline import Request, superresolve
from tests.conftest import COG_F64, LANDSAT, NAIP, read, request, write_raster


def run(src, out, **kw):
    kw.setdefault("method", "bicubic")
    return superresolve(request(input=str(src), output=str(out), **kw))


def corners(ds):
    gt = ds.GetGeoTransform()
    w, h = ds.RasterXSize, ds.RasterYSize
    return [(gt[0] + gt[1] * x + gt[2] * y, gt[3] + gt[4] * x + gt[5] * y) for x, y in ((0, 0), (w, 0), (0, h), (w, h))]


@pytest.mark.parametrize("src", [NAIP, LANDSAT], ids=["naip-utm14n", "landsat-4326"])
@pytest.mark.parametrize("scale", [2, 2.5, 3.7, 4])
def test_geometry_and_georeferencing(tmp_path, src, scale):
    out = tmp_path / "sr.tif"
    run(src, out, scale=scale, bands=[1, 2])
    sds, ods = gdal.Open(src), gdal.Open(str(out))
    assert (ods.RasterXSize, ods.RasterYSize) == (math.floor(sds.RasterXSize * scale + 0.5), math.floor(sds.RasterYSize * scale + 0.5))
    np.testing.assert_allclose(corners(ods), corners(sds), rtol=0, atol=1e-9 * max(abs(c) for xy in corners(sds) for c in xy))
    assert ods.GetSpatialRef().IsSame(sds.GetSpatialRef())
    assert ods.RasterCount == 2
    for b in (1, 2):
        assert ods.GetRasterBand(b).GetNoDataValue() == sds.GetRasterBand(b).GetNoDataValue()
        assert ods.GetRasterBand(b).DataType == sds.GetRasterBand(b).DataType
    assert ods.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    assert ods.GetRasterBand(1).GetBlockSize() == [256, 256]
    assert sorted(os.listdir(tmp_path)) == ["sr.tif"]


def test_tiled_equals_untiled(tmp_path):
    """Float64 input so nothing is rounded: many small tiles give the same output as one tile."""
    run(COG_F64, tmp_path / "one.tif", scale=2.7, tile=1024, overlap=0)
    run(COG_F64, tmp_path / "tiled.tif", scale=2.7, tile=48, overlap=12)
    a, _ = read(tmp_path / "one.tif")
    b, _ = read(tmp_path / "tiled.tif")
    assert a.dtype == np.float64 and a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())


def test_band_selection_order_and_descriptions(tmp_path):
    data = np.stack([np.full((40, 50), v, np.uint8) for v in (10, 20, 30)])
    src = write_raster(tmp_path / "in.tif", data, descriptions=["red", "green", "blue"])
    run(src, tmp_path / "out.tif", scale=2, bands=[3, 1])
    out, ds = read(tmp_path / "out.tif")
    assert out.shape == (2, 80, 100)
    assert (out[0] == 30).all() and (out[1] == 10).all()
    assert [ds.GetRasterBand(i).GetDescription() for i in (1, 2)] == ["blue", "red"]


@pytest.mark.parametrize("gdal_type,np_type", [(gdal.GDT_UInt16, np.uint16), (gdal.GDT_Int16, np.int16),
                                               (gdal.GDT_Float32, np.float32), (gdal.GDT_Float64, np.float64)])
def test_type_round_trip_keeps_radiometry(tmp_path, gdal_type, np_type):
    yy, xx = np.mgrid[0:60, 0:70]
    base = 1200 + 30 * xx + 17 * yy  # a plane: bicubic reproduces it inside, so values must come back in units
    if np_type == np.int16:
        base = base - 4000
    src = write_raster(tmp_path / "in.tif", base.astype(np_type), dtype=gdal_type, nodata=-9999 if np_type != np.uint16 else 0)
    run(src, tmp_path / "out.tif", scale=2)
    out, ds = read(tmp_path / "out.tif")
    assert out.dtype == np_type
    assert ds.GetRasterBand(1).GetNoDataValue() == (-9999 if np_type != np.uint16 else 0)
    ys = (np.arange(120) + 0.5) / 2 - 0.5
    xs = (np.arange(140) + 0.5) / 2 - 0.5
    expected = 1200 + 30 * xs[None, :] + 17 * ys[:, None] - (4000 if np_type == np.int16 else 0)
    inner = (slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(out[inner].astype(float), expected[inner], atol=0.51)


def test_nodata_stays_nodata_and_does_not_smear(tmp_path):
    data = np.full((64, 64), 200, np.uint8)
    data[20:40, 10:30] = 0  # a nodata hole
    data[:, 50:] = 90       # a second valid value, to see the edge is still interpolated
    src = write_raster(tmp_path / "in.tif", data, nodata=0)
    run(src, tmp_path / "out.tif", scale=2.5, tile=32, overlap=8)
    out, ds = read(tmp_path / "out.tif")
    assert ds.GetRasterBand(1).GetNoDataValue() == 0
    ys = np.clip(np.floor((np.arange(160) + 0.5) / 2.5), 0, 63).astype(int)
    hole = (data == 0)[ys][:, ys]
    assert (out[hole] == 0).all()
    assert (out[~hole] != 0).all()
    near_hole = out[40:110, 15:85][~hole[40:110, 15:85]]  # valid pixels around the hole, far from the 90 band
    assert (near_hole == 200).all()


def test_float_nan_and_inf_become_nodata(tmp_path):
    data = np.full((30, 30), 0.25, np.float32)
    data[5:9, 5:9] = np.nan
    data[20, 20] = np.inf
    src = write_raster(tmp_path / "in.tif", data, dtype=gdal.GDT_Float32, nodata=None)
    run(src, tmp_path / "out.tif", scale=2)
    out, _ = read(tmp_path / "out.tif")
    assert np.isnan(out[10:18, 10:18]).all() and np.isnan(out[40:42, 40:42]).all()
    valid = out[np.isfinite(out)]
    np.testing.assert_allclose(valid, 0.25, atol=1e-6)


def test_valid_pixels_never_take_the_nodata_value(tmp_path):
    data = np.zeros((20, 20), np.uint8) + 1
    data[:, 10:] = 255  # bicubic overshoots below 1 next to the step; it must not land on nodata 0
    src = write_raster(tmp_path / "in.tif", data, nodata=0)
    run(src, tmp_path / "out.tif", scale=3)
    out, _ = read(tmp_path / "out.tif")
    assert (out != 0).all()


def test_target_resolution_and_rotated_geotransform(tmp_path):
    data = np.random.default_rng(1).integers(1, 255, (30, 40)).astype(np.uint8)
    gt = (1000.0, 8.0, 6.0, 5000.0, 6.0, -8.0)  # rotated, 10 m pixels
    src = write_raster(tmp_path / "in.tif", data, geotransform=gt)
    run(src, tmp_path / "out.tif", target_resolution=4.0)
    _, ds = read(tmp_path / "out.tif")
    assert (ds.RasterXSize, ds.RasterYSize) == (100, 75)  # 10 m pixels to 4 m: scale 2.5
    np.testing.assert_allclose(corners(ds), corners(gdal.Open(src)), atol=1e-9)


def test_no_georeferencing_png(tmp_path):
    src = str(tmp_path / "in.png")
    mem = gdal.GetDriverByName("MEM").Create("", 20, 10, 3, gdal.GDT_Byte)
    gdal.GetDriverByName("PNG").CreateCopy(src, mem)
    run(src, tmp_path / "out.tif", scale=1.5)
    _, ds = read(tmp_path / "out.tif")
    assert (ds.RasterXSize, ds.RasterYSize) == (30, 15)
    assert ds.GetGeoTransform(can_return_null=True) is None
    with pytest.raises(LatentSRError, match="no geotransform"):
        run(src, tmp_path / "out2.tif", target_resolution=0.5)


def test_cancel_and_failure_leave_nothing(tmp_path):
    calls = []

    def cancel_after_first():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        superresolve(Request(input=NAIP, output=str(tmp_path / "c.tif"), scale=2, tile=128, overlap=16,
                             options=RunOptions(method="bicubic")),
                     is_cancelled=cancel_after_first)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kw,message", [
    (dict(scale=1), "greater than 1"), (dict(scale=8.5), "at most 8"), (dict(scale=float("nan")), "must be a number"),
    (dict(scale=2, tile=32, overlap=32), "smaller than the tile"), (dict(scale=2, bands=[5]), "band 5 does not exist"),
    (dict(scale=2, steps=0), "steps"), (dict(target_resolution=10.0), "not finer"),
])
def test_bad_requests_are_refused_in_one_line(tmp_path, kw, message):
    with pytest.raises(LatentSRError, match=message) as err:
        run(NAIP, tmp_path / "x.tif", **kw)
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_cog_output(tmp_path):
    run(LANDSAT, tmp_path / "cog.tif", scale=2, bands=[1], cog=True)
    ds = gdal.Open(str(tmp_path / "cog.tif"))
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_clip_to_extent_keeps_grid_and_whole_raster_statistics(tmp_path):
    data = np.stack([np.arange(80 * 60, dtype=np.uint16).reshape(60, 80) * 3])
    src = write_raster(tmp_path / "in.tif", data, dtype=gdal.GDT_UInt16, descriptions=["swir"])
    # pixels 10..29 (x) and 5..24 (y) of a 10 m grid starting at (500000, 4000000)
    run(src, tmp_path / "clip.tif", scale=2, extent=(500100.0, 3999750.0, 500300.0, 3999950.0))
    run(src, tmp_path / "whole.tif", scale=2)
    clip, ds = read(tmp_path / "clip.tif")
    whole, _ = read(tmp_path / "whole.tif")
    assert clip.shape == (40, 40)
    assert ds.GetGeoTransform() == (500100.0, 5.0, 0.0, 3999950.0, 0.0, -5.0)
    assert ds.GetRasterBand(1).GetDescription() == "swir"
    np.testing.assert_array_equal(clip[8:-8, 8:-8], whole[18:42, 28:52])
    with pytest.raises(LatentSRError, match="does not overlap"):
        run(src, tmp_path / "none.tif", scale=2, extent=(0.0, 0.0, 10.0, 10.0))


def test_target_resolution_gives_exactly_r_by_r_pixels(tmp_path):
    data = np.random.default_rng(2).integers(1, 255, (23, 37)).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", data, geotransform=(500000.0, 5.0, 0.0, 4000000.0, 0.0, -5.0))
    run(src, tmp_path / "out.tif", target_resolution=2.0)
    _, ds = read(tmp_path / "out.tif")
    assert ds.GetGeoTransform() == (500000.0, 2.0, 0.0, 4000000.0, 0.0, -2.0)  # origin kept, exact 2 m pixels
    assert (ds.RasterXSize, ds.RasterYSize) == (93, 58)  # 185 m and 115 m grown to whole 2 m pixels


@pytest.mark.parametrize("kw", [dict(scale=2.7), dict(target_resolution=3.0)])
def test_preview_lies_on_the_whole_runs_grid(tmp_path, kw):
    data = np.random.default_rng(3).integers(1, 255, (60, 80)).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", data)  # 10 m pixels from (500000, 4000000)
    run(src, tmp_path / "whole.tif", **kw)
    run(src, tmp_path / "part.tif", extent=(500101.3, 3999703.1, 500387.9, 3999951.7), **kw)
    whole, wds = read(tmp_path / "whole.tif")
    part, pds = read(tmp_path / "part.tif")
    gw, gp = wds.GetGeoTransform(), pds.GetGeoTransform()
    assert gp[1] == gw[1] and gp[5] == gw[5]
    col, row = (gp[0] - gw[0]) / gw[1], (gp[3] - gw[3]) / gw[5]
    assert col == pytest.approx(round(col), abs=1e-9) and row == pytest.approx(round(row), abs=1e-9)
    col, row = round(col), round(row)
    assert gp[0] <= 500101.3 and gp[3] >= 3999951.7  # it covers the extent asked for
    assert gp[0] + gp[1] * pds.RasterXSize >= 500387.9 and gp[3] + gp[5] * pds.RasterYSize <= 3999703.1
    inner = np.s_[8:-8, 8:-8]  # away from the window's edges, where a whole run sees more context
    np.testing.assert_array_equal(part[inner], whole[row:row + part.shape[0], col:col + part.shape[1]][inner])
