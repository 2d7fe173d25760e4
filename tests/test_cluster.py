"""--cluster on a real Dask cluster: a scheduler and two worker processes on 127.0.0.1.

The same bytes as a single run (bicubic, regression, LCMSR with a seed, on a NAIP crop with
nodata and two band groups), blocks that split the width, a worker killed mid-run, cancel, a block
that fails on bad data, and
a scheduler that cannot be reached. Then what a long-lived cluster must not get wrong: runs at
other details or with a replaced model folder, LATENTSR_MODEL set on the client only, workers of
another version, the scheduler's leftovers; and addresses that cannot work, a scheduler killed
mid-run."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from osgeo import gdal

from engine import cluster, modelfile, precision
from engine.errors import Cancelled, LatentSRError
from engine.methods import RunOptions, choose_backend
from engine.pipeline import Request, superresolve
from tests.conftest import NAIP, ROOT, request, write_raster

distributed = pytest.importorskip("distributed")

TILING = {"scale": 2.0, "tile": 32, "overlap": 8}  # 5 × 4 tiles: 2 blocks of 5 × 2 on 2 workers
TWO_BLOCKS = ["block00000-00000.tif", "block00000-00001.tif"]  # a .vrt output's shards with TILING


@pytest.fixture(scope="module")
def scheduler():
    """The address of a local scheduler with two single-threaded worker processes."""
    import dask

    with cluster.kept_environment(dask.config.get("distributed.nanny.pre-spawn-environ")):
        with warnings.catch_warnings():  # port 8787 in use
            warnings.simplefilter("ignore")
            local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                             dashboard_address=None, silence_logs=50)
        with local, distributed.Client(local.scheduler_address, set_as_default=False) as client:
            client.wait_for_workers(2)
            yield local.scheduler_address


@pytest.fixture(scope="module")
def client(scheduler):
    with distributed.Client(scheduler, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 96×112 crop of a NAIP scene (4 bands: two band groups for a 3-band model), nodata 0, with a
    hole of nodata in one band and a fully empty corner."""
    path = tmp_path_factory.mktemp("crop") / "naip.tif"
    ds = gdal.Translate(str(path), NAIP, srcWin=[300, 200, 96, 112])
    for b in range(1, 5):
        band = ds.GetRasterBand(b)
        a = band.ReadAsArray()
        a[:6, :8] = 0
        if b == 2:
            a[40:60, 10:30] = 0
        band.WriteArray(a)
        band.SetNoDataValue(0)
    ds = None
    return str(path)


def run(crop, out, **kw):
    return superresolve(request(input=crop, output=str(out), **{**TILING, **kw}))


def pixels(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(ds.RasterCount)], \
        ds.GetGeoTransform(), ds.GetRasterBand(1).DataType


def same(a, b):
    pa, pb = pixels(a), pixels(b)
    assert pa[0].shape == pb[0].shape and pa[0].tobytes() == pb[0].tobytes()
    assert repr(pa[1:]) == repr(pb[1:])  # nodata, geotransform, type (repr: NaN nodata equals itself)


@pytest.mark.parametrize("method, kw", [("bicubic", {}), ("regression", {}), ("lcmsr", {"seed": 7})])
def test_same_bytes_as_a_single_run(scheduler, crop, tmp_path, method, kw):
    run(crop, tmp_path / "single.tif", method=method, **kw)
    result = run(crop, tmp_path / "cluster.tif", method=method, cluster=scheduler, **kw)
    assert result.output == str(tmp_path / "cluster.tif")
    same(tmp_path / "single.tif", tmp_path / "cluster.tif")
    a = pixels(tmp_path / "cluster.tif")[0]
    assert (a[:, :12, :16] == 0).all() and (a[1, 100:100 + 20] == 0).any()  # nodata stays nodata
    assert sorted(os.listdir(tmp_path)) == ["cluster.tif", "single.tif"]  # no shard, VRT or lock left


@pytest.mark.parametrize("name", ["cluster.tif", "cluster.vrt"])
@pytest.mark.parametrize("method, kw", [("bicubic", {}), ("lcmsr", {"seed": 7})])
def test_blocks_that_split_the_width_give_the_bytes_of_a_single_run(scheduler, crop, tmp_path, monkeypatch, name,
                                                                    method, kw):
    """Tile 24: 6 × 5 tiles, in blocks of 2 × 2 cells: 3 × 3 blocks, the inner ones with the context
    row above them and the context column to their left. Into a .tif (the client packs the 2-D
    mosaic) and into a .vrt (one shard per block)."""
    from engine.tiling import window_starts

    tiling = {"tile": 24, "overlap": 6}
    assert (len(window_starts(112, 24, 6)), len(window_starts(96, 24, 6))) == (6, 5)
    monkeypatch.setattr(cluster, "block_shape", lambda rows, cols, workers: (2, 2))
    run(crop, tmp_path / "single.tif", method=method, **tiling, **kw)
    run(crop, tmp_path / name, method=method, cluster=scheduler, **tiling, **kw)
    same(tmp_path / "single.tif", tmp_path / name)
    if name.endswith(".vrt"):
        shards = sorted(os.listdir(tmp_path / "cluster.shards"))
        assert shards == [f"block{r:05d}-{c:05d}.tif" for r in range(3) for c in range(3)]
        sizes = {shard: gdal.Open(str(tmp_path / "cluster.shards" / shard)).RasterXSize for shard in shards}
        assert sum(sizes[f"block00001-{c:05d}.tif"] for c in range(3)) == 192  # the width, in three shards
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("single")) == \
        (["cluster.shards", "cluster.vrt"] if name.endswith(".vrt") else ["cluster.tif"])  # nothing else left


def test_blocks_of_a_part_of_the_input_give_the_bytes_of_a_single_run(scheduler, crop, tmp_path, monkeypatch):
    """--extent with blocks that split the width: the workers read the same window of the input."""
    x0, px, _, y0, _, py = gdal.Open(crop).GetGeoTransform()
    extent = (x0 + 7.3 * px, y0 + 100.4 * py, x0 + 90.2 * px, y0 + 9.1 * py)
    monkeypatch.setattr(cluster, "block_shape", lambda rows, cols, workers: (2, 2))
    kw = {"method": "lcmsr", "seed": 2, "tile": 24, "overlap": 6, "extent": extent}
    run(crop, tmp_path / "single.tif", **kw)
    run(crop, tmp_path / "cluster.tif", cluster=scheduler, **kw)
    same(tmp_path / "single.tif", tmp_path / "cluster.tif")
    assert gdal.Open(str(tmp_path / "cluster.tif")).RasterXSize < 2 * 96  # a part of the input only


def without_the_repo() -> dict:
    """This process's environment without the repository on PYTHONPATH."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
             if p and os.path.realpath(p) != os.path.realpath(ROOT)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@contextlib.contextmanager
def stock_cluster(folder, workers: int, worker_env: dict | None = None):
    """The address of a plain `dask scheduler` and ``workers`` plain `dask worker` processes, started
    in ``folder`` from an environment that has the engine's dependencies but not the engine (the
    workers' environment: ``worker_env``)."""
    env = without_the_repo()
    python = sys.executable
    assert subprocess.run([python, "-c", "import engine"], env=env, cwd=folder, capture_output=True).returncode != 0
    port = free_port()
    dask_cli = os.path.join(os.path.dirname(python), "dask")
    started = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    started += [subprocess.Popen([dask_cli, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard"],
                                 env=worker_env or env, cwd=folder, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
                for _ in range(workers)]
    try:
        with distributed.Client(f"tcp://127.0.0.1:{port}", timeout=60, set_as_default=False) as c:
            c.wait_for_workers(workers, timeout=60)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        for proc in reversed(started):  # SIGTERM: Dask removes its scratch folders (and the engine's zip)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def stock_scheduler(tmp_path_factory):
    with stock_cluster(tmp_path_factory.mktemp("stock"), 2) as address:
        yield address


def test_a_stock_worker_with_another_engine_on_its_pythonpath_is_refused_in_one_line(crop, tmp_path):
    """The worker imports its own engine (an edited copy), not the one the client ships."""
    shutil.copytree(os.path.join(ROOT, "engine"), tmp_path / "old" / "engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "old" / "engine" / "errors.py", "a") as f:
        f.write("# another version\n")
    env = without_the_repo()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "old"), *filter(None, [env["PYTHONPATH"]])])
    out = tmp_path / "out"
    out.mkdir()
    with stock_cluster(tmp_path, 1, worker_env=env) as address:
        with pytest.raises(LatentSRError, match=r"^the Dask worker at tcp://127\.0\.0\.1:\d+ runs another version of "
                                                r"LatentSR's engine than the client \(its engine is in \S+/old\): take "
                                                r"LatentSR off the worker's PYTHONPATH") as info:
            run(crop, out / "sr.tif", method="bicubic", cluster=address)
    assert "\n" not in str(info.value) and os.listdir(out) == []


def test_stock_dask_workers_get_the_engine_from_the_client(stock_scheduler, crop, tmp_path):
    """Bicubic, regression and seeded LCMSR on stock workers: the bytes of a single run, and the
    workers (and the scheduler, which unpickles the tasks) import the engine the client shipped."""
    for method, kw in [("bicubic", {}), ("regression", {}), ("lcmsr", {"seed": 7})]:
        run(crop, tmp_path / f"{method}_single.tif", method=method, **kw)
        run(crop, tmp_path / f"{method}_cluster.tif", method=method, cluster=stock_scheduler, **kw)
        same(tmp_path / f"{method}_single.tif", tmp_path / f"{method}_cluster.tif")
    with distributed.Client(stock_scheduler, set_as_default=False) as c:
        homes = [*c.run(cluster.module_home).values(), c.run_on_scheduler(cluster.module_home)]
        versions = set(c.run(cluster.engine_version).values())
    zip_name = f"latentsr-engine-{cluster.engine_version()[:16]}.zip"
    assert len(homes) == 3 and all(os.path.basename(h) == zip_name for h in homes), homes
    assert versions == {cluster.engine_version()}
    assert len(os.listdir(tmp_path)) == 6  # no shard, VRT or lock left


def test_samples_and_uncertainty_on_the_cluster(scheduler, crop, tmp_path):
    kw = {"method": "lcmsr", "seed": 3, "samples": 2, "bands": [3, 1]}
    run(crop, tmp_path / "single.tif", uncertainty=str(tmp_path / "single_std.tif"), **kw)
    run(crop, tmp_path / "cluster.tif", uncertainty=str(tmp_path / "cluster_std.tif"), cluster=scheduler, **kw)
    same(tmp_path / "single.tif", tmp_path / "cluster.tif")
    same(tmp_path / "single_std.tif", tmp_path / "cluster_std.tif")


def fingerprints(folder) -> dict:
    """sha256 of every file under ``folder``, by relative path."""
    import hashlib

    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_a_vrt_output_is_written_by_the_workers(scheduler, crop, tmp_path):
    """x.vrt: the workers write tiled DEFLATE GeoTIFF shards into x.shards, the client only the VRT
    (sources relative to it); pixels, nodata, mask, geotransform and type are the single run's, and
    the pair still reads the same once moved elsewhere."""
    kw = {"method": "lcmsr", "seed": 3, "samples": 2}
    run(crop, tmp_path / "single.tif", uncertainty=str(tmp_path / "single_std.tif"), **kw)
    out = tmp_path / "out"
    out.mkdir()
    run(crop, out / "sr.vrt", uncertainty=str(out / "sr_std.vrt"), cluster=scheduler, **kw)
    assert sorted(os.listdir(out)) == ["sr.shards", "sr.vrt", "sr_std.shards", "sr_std.vrt"]
    assert sorted(os.listdir(out / "sr.shards")) == TWO_BLOCKS  # nothing else
    shard = gdal.Open(str(out / "sr.shards" / TWO_BLOCKS[0]))
    assert shard.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    assert shard.GetRasterBand(1).GetBlockSize() == [256, 256]
    assert 'relativeToVRT="1">sr.shards/block00000-00000.tif<' in (out / "sr.vrt").read_text()
    os.rename(out, tmp_path / "moved")
    for name, single in [("sr.vrt", "single.tif"), ("sr_std.vrt", "single_std.tif")]:
        same(tmp_path / single, tmp_path / "moved" / name)
    datasets = [gdal.Open(str(p)) for p in (tmp_path / "single.tif", tmp_path / "moved" / "sr.vrt")]
    masks = [ds.GetRasterBand(1).GetMaskBand().ReadAsArray() for ds in datasets]
    assert masks[0].tobytes() == masks[1].tobytes() and (masks[0] == 0).any()


def test_a_vrt_output_whose_shards_folder_holds_the_input_is_refused(scheduler, crop, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run(crop, out / "sr.vrt", method="bicubic", cluster=scheduler)
    before = fingerprints(out)
    shard = str(out / "sr.shards" / TWO_BLOCKS[0])
    with pytest.raises(LatentSRError, match=r"^the output \S+sr\.vrt would replace its shards folder \S+sr\.shards, "
                                            r"which the input \S+block00000-00000\.tif reads"):
        superresolve(request(input=shard, output=str(out / "sr.vrt"), method="bicubic", cluster=scheduler, **TILING))
    assert fingerprints(out) == before


def test_a_vrt_output_without_a_cluster_or_as_a_cog_is_refused(crop, tmp_path):
    with pytest.raises(LatentSRError, match=r"^a \.vrt output is a VRT of GeoTIFF shards that the workers of a "
                                            r"cluster write: give --cluster"):
        run(crop, tmp_path / "sr.vrt", method="bicubic")
    with pytest.raises(LatentSRError, match=r"^a COG is one file: give the output a \.tif name, not sr\.vrt$"):
        run(crop, tmp_path / "sr.vrt", method="bicubic", cog=True, cluster="local:1")
    assert os.listdir(tmp_path) == []


class KillOnce(distributed.WorkerPlugin):
    """Kills its worker's process the first time, cluster-wide, that a block task starts executing."""

    def __init__(self, marker: str):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "latentsr-block" in str(key):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("name", ["cluster.tif", "cluster.vrt"])
def test_a_killed_worker_changes_nothing(scheduler, client, crop, tmp_path, name):
    run(crop, tmp_path / "single.tif", method="lcmsr", seed=5)
    marker = str(tmp_path / "killed")
    client.register_plugin(KillOnce(marker), name="kill-once")
    try:
        run(crop, tmp_path / name, method="lcmsr", seed=5, cluster=scheduler)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert os.path.exists(marker)  # a worker did die with a block in hand
    same(tmp_path / "single.tif", tmp_path / name)
    if name.endswith(".vrt"):
        assert sorted(os.listdir(tmp_path / "cluster.shards")) == TWO_BLOCKS
    client.wait_for_workers(2)  # the nanny restarts it for the next tests


def test_cancel_leaves_nothing(scheduler, client, crop, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    with pytest.raises(Cancelled):
        superresolve(request(input=crop, output=str(out / "sr.tif"), method="lcmsr", cluster=scheduler, **TILING),
                     progress=seen.append, is_cancelled=lambda: any(0 < f < 0.95 for f in seen))
    assert os.listdir(out) == []
    assert not any(client.processing().values())  # no block is still running


def test_a_vrt_output_and_its_shards_are_replaced_together_or_not_at_all(scheduler, client, crop, tmp_path,
                                                                          monkeypatch):
    """An older x.vrt with its x.shards: a cancelled run, and a run whose last move fails, leave every
    byte of it; a finished run replaces both (no older shard stays)."""
    out = tmp_path / "out"
    out.mkdir()
    run(crop, out / "sr.vrt", method="bicubic", cluster=scheduler, tile=16, overlap=4)  # other blocks than later
    (out / "sr.shards" / "block00009-00000.tif").write_bytes(b"an older shard that only the older VRT names")
    before = fingerprints(out)
    seen = []
    with pytest.raises(Cancelled):
        superresolve(request(input=crop, output=str(out / "sr.vrt"), method="lcmsr", cluster=scheduler, **TILING),
                     progress=seen.append, is_cancelled=lambda: any(0 < f < 0.95 for f in seen))
    assert fingerprints(out) == before and sorted(os.listdir(out)) == ["sr.shards", "sr.vrt"]
    real_replace = os.replace

    def fail_on_the_vrt(a, b):
        if str(b).endswith("sr.vrt") and ".part.vrt" in str(a):
            raise OSError(28, "No space left on device")
        return real_replace(a, b)
    monkeypatch.setattr(os, "replace", fail_on_the_vrt)
    with pytest.raises(LatentSRError, match="cannot be moved into place"):
        run(crop, out / "sr.vrt", method="lcmsr", seed=1, cluster=scheduler)
    monkeypatch.undo()
    assert fingerprints(out) == before and sorted(os.listdir(out)) == ["sr.shards", "sr.vrt"]
    run(crop, out / "sr.vrt", method="lcmsr", seed=1, cluster=scheduler)
    run(crop, tmp_path / "single.tif", method="lcmsr", seed=1)
    same(tmp_path / "single.tif", out / "sr.vrt")
    assert sorted(os.listdir(out)) == ["sr.shards", "sr.vrt"]
    assert sorted(os.listdir(out / "sr.shards")) == TWO_BLOCKS


def test_ctrl_c_on_a_local_cluster_is_one_line_and_leaves_nothing(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: the local workers ignore it, the
    client stops the blocks, exits 130 and removes every shard."""
    big = write_raster(tmp_path / "big.tif", np.random.default_rng(1).integers(1, 255, (3, 400, 400)).astype(np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "engine", "superresolve", big, str(out / "sr.tif"), "--scale", "4",
                          "--method", "bicubic", "--tile", "32", "--overlap", "8", "--cluster", "local:2"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while not any(".shard" in n for n in os.listdir(out)) and p.poll() is None:
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err.strip().splitlines() == ["error: interrupted"]
    assert os.listdir(out) == []


@pytest.mark.parametrize("name", ["sr.tif", "sr.vrt"])
def test_a_block_that_fails_names_its_window_and_leaves_nothing(scheduler, tmp_path, name):
    """One strip of a DEFLATE GeoTIFF is garbage: the client's decimated statistics never read it,
    a block that needs it fails, and says where it is in the output and in the input."""
    src = write_raster(tmp_path / "bad.tif", np.random.default_rng(0).integers(1, 255, (64, 1100)).astype(np.uint8))
    gdal.Translate(str(tmp_path / "strips.tif"), src, creationOptions=["COMPRESS=DEFLATE", "BLOCKYSIZE=1"])
    ds = gdal.Open(str(tmp_path / "strips.tif"))
    offset = int(ds.GetRasterBand(1).GetMetadataItem("BLOCK_OFFSET_0_40", "TIFF"))
    size = int(ds.GetRasterBand(1).GetMetadataItem("BLOCK_SIZE_0_40", "TIFF"))
    ds = None
    with open(tmp_path / "strips.tif", "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)
    out = tmp_path / "out"
    out.mkdir()
    place = (r"^output rows (\d+)-(\d+), columns (\d+)-(\d+) \(input rows (\d+)-(\d+), columns (\d+)-(\d+)\) failed: "
             r"reading the input")
    with pytest.raises(LatentSRError, match=place) as info:
        superresolve(request(input=str(tmp_path / "strips.tif"), output=str(out / name), method="bicubic",
                             cluster=scheduler, **TILING))
    y0, y1, x0, x1, in_y0, in_y1, in_x0, in_x1 = map(int, re.match(place, str(info.value)).groups())
    assert in_y0 <= 40 <= in_y1 and (y0, y1) == (0, 127)  # all 3 tile rows in each of the 2 blocks across
    assert 0 <= in_x0 <= x0 // 2 < x1 // 2 <= in_x1 < 1100  # the input columns its tiles read
    assert x1 - x0 + 1 < 2200 and in_x1 - in_x0 + 1 < 1100  # a block across half the width, not all of it
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_and_exit_2(crop, tmp_path):
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "engine", "superresolve", crop, str(out / "sr.tif"), "--scale", "2",
                           "--method", "bicubic", "--cluster", f"tcp://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1
    assert os.listdir(out) == []


def test_without_dask_cluster_says_what_to_install(crop, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(LatentSRError, match=r"pip install 'dask\[distributed\]==2026\.8\.0'"):
        run(crop, tmp_path / "sr.tif", method="bicubic", cluster="local:2")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("text", ["local:0", "local:x", "local", "tcp://", "no such host:1:2", "local:100000"])
def test_bad_cluster_address_is_refused_before_anything_runs(text):
    with pytest.raises(LatentSRError, match="^cluster"):  # before the (missing) input is opened
        superresolve(request(input="no-such-input.tif", output="out.tif", scale=2, cluster=text))


def test_addresses():
    assert cluster.parse_address("local:3") == ("local", 3)
    assert cluster.parse_address("tcp://10.0.0.5:8786") == ("tcp://10.0.0.5:8786", None)
    assert cluster.parse_address("scheduler.example.org:8786") == ("scheduler.example.org:8786", None)


def makespan(n_rows, n_cols, workers, k, m):
    """Waves of blocks on the workers × the tiles of a block with its context row and column."""
    down, across = -(-n_rows // k), -(-n_cols // m)
    return -(-down * across // workers) * (k + (down > 1)) * (m + (across > 1))


@pytest.mark.parametrize("n_rows, n_cols, workers", [(1, 1, 4), (5, 4, 2), (5, 4, 1), (40, 37, 2), (36, 36, 100),
                                                     (70, 90, 8), (9, 200, 16), (100, 3, 7)])
def test_block_shape_balances_work_and_waves(n_rows, n_cols, workers):
    """The shape is the least makespan of every shape within MAX_BLOCK_TILES, and the blocks cover
    each cell once."""
    k, m = cluster.block_shape(n_rows, n_cols, workers)
    assert 1 <= k <= n_rows and 1 <= m <= n_cols and k * m <= cluster.MAX_BLOCK_TILES
    assert makespan(n_rows, n_cols, workers, k, m) == min(
        makespan(n_rows, n_cols, workers, a, b) for a in range(1, n_rows + 1) for b in range(1, n_cols + 1)
        if a * b <= cluster.MAX_BLOCK_TILES)
    cells = [(r, c) for block in cluster.blocks(n_rows, n_cols, k, m) for r in block.rows for c in block.cols]
    assert sorted(cells) == [(r, c) for r in range(n_rows) for c in range(n_cols)] and len(set(cells)) == len(cells)


def test_block_shape_splits_the_width_of_a_large_output():
    """100 GP at ×4 with tile 256 (353 × 353 tiles): on 100 worker threads, 100 blocks in one wave, each
    a share of both axes, each costing less than the 4 tile rows and the context row of whole-row
    bands; on 1,000, less than one tile row and its context row, the least that whole rows could do;
    on one, blocks within MAX_BLOCK_TILES; and a huge grid is planned at once."""
    k, m = cluster.block_shape(353, 353, 100)
    assert (-(-353 // k)) * (-(-353 // m)) <= 100 and k < 353 and m < 353
    assert makespan(353, 353, 100, k, m) < (4 + 1) * 353
    assert makespan(353, 353, 1000, *cluster.block_shape(353, 353, 1000)) < (1 + 1) * 353 / 4
    k, m = cluster.block_shape(353, 353, 1)
    assert k * m <= cluster.MAX_BLOCK_TILES
    start = time.monotonic()
    cluster.block_shape(20_000, 20_000, 1000)
    assert time.monotonic() - start < 2


def test_workers_that_cannot_import_the_engine_get_told_where_it_is():
    error = cluster.block_error(RuntimeError("Error during deserialization of the task graph. This frequently occurs"))
    assert f"({cluster.module_root()}), which the client sends them: both need its dependencies" in str(error)


def test_processing_cluster_parameter(provider, scheduler, crop, tmp_path):
    import processing

    params = {"INPUT": crop, "SCALE": 2, "METHOD": 3, "TILE_SIZE": 32, "OVERLAP": 8}
    processing.run("latentsr:superresolve", {**params, "OUTPUT": str(tmp_path / "single.tif")})
    processing.run("latentsr:superresolve", {**params, "CLUSTER": scheduler, "OUTPUT": str(tmp_path / "cluster.tif")})
    same(tmp_path / "single.tif", tmp_path / "cluster.tif")


def test_alpha_masked_input_gives_the_same_pixels_and_mask(scheduler, crop, tmp_path):
    ds = gdal.Open(crop)
    rgb = ds.ReadAsArray()[:3]
    alpha = np.full(rgb.shape[1:], 255, np.uint8)
    alpha[60:, 50:] = 0
    src = tmp_path / "rgba.tif"
    gdal.GetDriverByName("GTiff").Create(str(src), rgb.shape[2], rgb.shape[1], 4, gdal.GDT_Byte, ["ALPHA=YES"])
    out = gdal.Open(str(src), gdal.GA_Update)
    for i, a in enumerate([*rgb, alpha]):
        out.GetRasterBand(i + 1).WriteArray(a)
    out = None
    run(str(src), tmp_path / "single.tif", method="bicubic", bands=[1, 2, 3])
    run(str(src), tmp_path / "cluster.tif", method="bicubic", bands=[1, 2, 3], cluster=scheduler)
    same(tmp_path / "single.tif", tmp_path / "cluster.tif")
    masks = []
    for name in ("single.tif", "cluster.tif"):
        ds = gdal.Open(str(tmp_path / name))  # kept while its mask band is read
        masks.append(ds.GetRasterBand(1).GetMaskBand().ReadAsArray())
    assert (masks[0] == 0).any() and np.array_equal(masks[0], masks[1])


# Third hostile round (issue 23): what a long-lived cluster must never get wrong, and addresses.

def tiny_model(folder, seed):
    """A tiny random bundle written into ``folder`` (replacing what was there, as a resumed fine-tune
    rewrites its folder)."""
    import shutil

    from training.bundle import random_bundle, write

    shutil.rmtree(folder, ignore_errors=True)
    return str(write(folder, *random_bundle("tiny", seed=seed)))


def test_detail_changes_on_a_long_lived_cluster_give_each_single_run(scheduler, crop, tmp_path):
    """The workers keep their method between runs: a run at another detail must not get the last one."""
    singles = []
    for i, detail in enumerate([0.25, 1.0, 0.0]):
        kw = {"method": "lcmsr", "seed": 11, "detail": detail}
        run(crop, tmp_path / f"single{i}.tif", **kw)
        run(crop, tmp_path / f"cluster{i}.tif", cluster=scheduler, **kw)
        same(tmp_path / f"single{i}.tif", tmp_path / f"cluster{i}.tif")
        singles.append(pixels(tmp_path / f"single{i}.tif")[0].tobytes())
    assert len(set(singles)) == 3  # each detail does give other pixels


def test_a_model_folder_replaced_between_runs_is_reloaded(scheduler, crop, tmp_path):
    folder = tmp_path / "model"
    singles = []
    for i, seed in enumerate([1, 2]):
        tiny_model(folder, seed)
        kw = {"method": "regression", "model": str(folder), "bands": [1, 2, 3]}
        run(crop, tmp_path / f"single{i}.tif", **kw)
        run(crop, tmp_path / f"cluster{i}.tif", cluster=scheduler, **kw)
        same(tmp_path / f"single{i}.tif", tmp_path / f"cluster{i}.tif")
        singles.append(pixels(tmp_path / f"single{i}.tif")[0].tobytes())
    assert singles[0] != singles[1]


def test_latentsr_model_set_on_the_client_only_is_what_the_workers_run(scheduler, crop, tmp_path, monkeypatch):
    """The worker processes were started without LATENTSR_MODEL: the client sends its model."""
    kw = {"method": "regression", "bands": [1, 2, 3]}
    run(crop, tmp_path / "default.tif", **kw)
    monkeypatch.setenv("LATENTSR_MODEL", tiny_model(tmp_path / "model", 3))
    run(crop, tmp_path / "single.tif", **kw)
    run(crop, tmp_path / "cluster.tif", cluster=scheduler, **kw)
    same(tmp_path / "single.tif", tmp_path / "cluster.tif")
    assert pixels(tmp_path / "default.tif")[0].tobytes() != pixels(tmp_path / "single.tif")[0].tobytes()


@pytest.mark.parametrize("what, fake, message", [
    ("engine_version", "0" * 64, r"^the Dask worker at tcp://127\.0\.0\.1:\d+ runs another version of LatentSR's engine"),
    ("card_sha256", "0" * 64, r"^the model \S*/latentsr-rgb on the Dask worker at tcp://127\.0\.0\.1:\d+ is not the client's"),
])
def test_a_worker_that_differs_from_the_client_is_refused_in_one_line(scheduler, crop, tmp_path, monkeypatch, what,
                                                                      fake, message):
    """The client's fingerprint is faked (the worker processes compute their own)."""
    monkeypatch.setattr(cluster, what, lambda *args: fake)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LatentSRError, match=message) as info:
        run(crop, out / "sr.tif", method="lcmsr", seed=1, cluster=scheduler)
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []


def test_runs_leave_no_topic_or_event_on_the_scheduler(scheduler, client, crop, tmp_path):
    def leftovers(dask_scheduler=None):
        return ([name for name in dask_scheduler._broker._topics if name.startswith("latentsr-")],
                [name for name in dask_scheduler.extensions["events"]._events if str(name).startswith("latentsr-")])

    client.run_on_scheduler(lambda dask_scheduler=None: [dask_scheduler._broker._topics.pop(name) for name in
                                                         leftovers(dask_scheduler)[0]])  # earlier tests' runs
    run(crop, tmp_path / "a.tif", method="bicubic", cluster=scheduler)
    seen = []
    with pytest.raises(Cancelled):  # a cancel sets the run's Event
        superresolve(request(input=crop, output=str(tmp_path / "b.tif"), method="lcmsr", cluster=scheduler, **TILING),
                     progress=seen.append, is_cancelled=lambda: any(0 < f < 0.95 for f in seen))
    assert client.run_on_scheduler(leftovers) == ([], [])


def with_options(req: Request, **options) -> Request:
    return dataclasses.replace(req, options=dataclasses.replace(req.options, **options))


def test_method_key_changes_with_each_run_option_but_the_sampling_ones():
    """Each run option changed alone changes a worker's method key, but seed and samples
    (RunOptions.SAMPLING); no other field of the request is in it. A new option is tried here."""
    base = Request(input="in.tif", output="out.tif", scale=2, options=RunOptions(method="lcmsr"))
    key = cluster.method_key(base, None)
    changes = {"method": "e2diffsr", "steps": 2, "detail": 0.5, "backend": "onnx", "device": "cpu", "model": "other",
               "consistency": True, "precision": "float32", "seed": 9, "samples": 3}
    assert set(changes) == {f.name for f in dataclasses.fields(RunOptions)}
    assert set(RunOptions.SAMPLING) < set(changes)
    for name, value in changes.items():
        changed = cluster.method_key(with_options(base, **{name: value}), None)
        assert (changed == key) == (name in RunOptions.SAMPLING), name
    assert cluster.method_key(base, ("card", ())) != key  # the model folder's fingerprint
    unrelated = {"input": "x.tif", "output": "y.tif", "scale": 3.0, "target_resolution": 1.0, "bands": [1], "tile": 64,
                 "overlap": 4, "uncertainty": "u.tif", "cog": True, "extent": (0, 0, 1, 1), "cluster": "local:2"}
    assert set(unrelated) | {"options"} == {f.name for f in dataclasses.fields(Request)}
    for name, value in unrelated.items():  # a worker keeps its method across runs that change only these
        assert cluster.method_key(dataclasses.replace(base, **{name: value}), None) == key, name


def test_building_the_method_reads_no_option_that_the_method_key_leaves_out(monkeypatch):
    """The key leaves out RunOptions.SAMPLING: RunOptions.make_method must never read one of them."""
    from engine import methods

    read = set()

    class Watched(RunOptions):
        def __getattribute__(self, name):
            read.add(name)
            return super().__getattribute__(name)

    monkeypatch.setattr(methods, "build_method", lambda name, options: object())
    monkeypatch.setattr(methods, "Projected", lambda method: method)
    for consistency in (False, True):
        options = Watched(method="lcmsr", consistency=consistency)
        read.clear()
        options.make_method()
        fields = {f.name for f in dataclasses.fields(RunOptions)}
        assert {"method", "steps", "detail", "model", "consistency"} <= read & fields
        assert not read & set(RunOptions.SAMPLING)


def test_model_fingerprint_changes_when_the_folder_is_replaced_or_rewritten(tmp_path):
    folder = tmp_path / "model"
    tiny_model(folder, 1)
    first = cluster.model_fingerprint(str(folder))
    assert cluster.model_fingerprint(str(folder)) == first
    tiny_model(folder, 2)  # another model at the same path
    second = cluster.model_fingerprint(str(folder))
    assert second[0] != first[0]
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[::-1])  # same size, same card: the file itself says it changed
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    third = cluster.model_fingerprint(str(folder))
    assert third[0] == second[0] and third != second


def test_the_client_sends_its_own_model_and_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSR_MODEL", tiny_model(tmp_path / "model", 1))
    req = Request(input="in.tif", output="out.tif", scale=2, options=RunOptions(method="lcmsr"))
    assert cluster.for_workers(req).options.model == str(tmp_path / "model")
    assert cluster.for_workers(req).options.backend == "torch"  # auto, for a model without ONNX graphs
    monkeypatch.setenv("LATENTSR_MODEL", "latentsr-rgb")  # a bundled model goes as its folder (the card is checked)
    assert cluster.for_workers(req).options.model == str(modelfile.MODELS_DIR / "latentsr-rgb")
    assert cluster.for_workers(req).options.backend == choose_backend("auto", "auto",
                                                                      modelfile.read_card(modelfile.resolve(None)))
    assert cluster.for_workers(with_options(req, backend="torch")).options.backend == "torch"
    # precision auto goes as the client's choice, so that every band runs its arithmetic (engine.precision)
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(precision.AUTO_CPU_FLAGS))
    assert cluster.for_workers(with_options(req, backend="torch")).options.precision == "bf16"
    assert cluster.for_workers(with_options(req, backend="onnx")).options.precision == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert cluster.for_workers(with_options(req, backend="torch")).options.precision == "float32"
    monkeypatch.delenv("LATENTSR_MODEL")
    assert cluster.for_workers(req).options.model == str(modelfile.MODELS_DIR / "latentsr-rgb")
    assert cluster.for_workers(with_options(req, method="bicubic")).options.model is None


@pytest.mark.parametrize("text, expected", [
    ("tcp://[::1]:8786", ("tcp", "::1", 8786)),
    ("[fe80::1]:9000", ("tcp", "fe80::1", 9000)),
    ("tls://10.0.0.5:8786", ("tls", "10.0.0.5", 8786)),
    ("scheduler.example.org:8786", ("tcp", "scheduler.example.org", 8786)),
])
def test_scheduler_addresses_are_understood(text, expected):
    assert cluster.parse_address(text) == (text, None)
    assert cluster.address_parts(text) == expected


@pytest.mark.parametrize("text, message", [
    ("foo", "has no port: write tcp://foo:8786"),
    ("inproc://x", "in-process address"),
    ("http://host:8786", "unknown protocol 'http://'"),
    ("tcp://[::zz]:8786", "is not an IPv6 address"),
    ("tcp://host:0", "the port must be a number from 1 to 65535"),
    ("tcp://host:99999", "the port must be a number from 1 to 65535"),
    ("tcp://host:port", "the port must be a number from 1 to 65535"),
    ("tcp://::1:8786", "an IPv6 host in brackets: tcp://[::1]:8786"),
])
def test_bad_scheduler_addresses_are_one_line(text, message):
    with pytest.raises(LatentSRError, match=f"^cluster '{re.escape(text)}'.*{re.escape(message)}"):
        cluster.parse_address(text)


@pytest.fixture
def http_port():
    """A port where an HTTP server, not a Dask scheduler, listens."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("address, message", [
    ("inproc://x", "in-process address"),
    ("foo", "has no port"),
    ("tcp://[::1]:{free}", "cannot reach the Dask scheduler at tcp://[::1]:"),
    ("tcp://127.0.0.1:{http}", "cannot reach the Dask scheduler at tcp://127.0.0.1:"),
    ("tcp://10.255.255.1:8786", "cannot reach the Dask scheduler at tcp://10.255.255.1:8786"),
])
def test_cli_cluster_addresses_that_cannot_work_end_in_one_line(crop, tmp_path, http_port, address, message):
    """Within the connect timeout (2 s here): a closed port, an HTTP server that never answers Dask's
    handshake, an unroutable address; each as one line on stderr, exit 2, no traceback, no file."""
    address = address.format(free=free_port(), http=http_port)
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "engine", "superresolve", crop, str(out / "sr.tif"), "--scale", "2",
                           "--method", "bicubic", "--cluster", address],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert time.monotonic() - start < 20
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert os.listdir(out) == []


def test_a_scheduler_killed_mid_run_ends_the_run_in_one_line(tmp_path):
    """A scheduler and a worker of their own (PYTHONPATH on both, as the README says); the scheduler
    is killed once the first shard exists: the CLI ends within seconds, one line, nothing left."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT)
    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    started = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    started.append(subprocess.Popen([dask_cli, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                                     "--no-dashboard"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
    big = write_raster(tmp_path / "big.tif", np.random.default_rng(1).integers(1, 255, (3, 200, 200)).astype(np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    try:
        with distributed.Client(f"tcp://127.0.0.1:{port}", timeout=60, set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
        p = subprocess.Popen([sys.executable, "-m", "engine", "superresolve", big, str(out / "sr.tif"), "--scale", "4",
                              "--method", "lcmsr", "--tile", "32", "--overlap", "8", "--cluster",
                              f"tcp://127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        started.append(p)
        while not any(".shard" in n for n in os.listdir(out)) and p.poll() is None:
            time.sleep(0.02)
        started[0].kill()
        killed = time.monotonic()
        _, err = p.communicate(timeout=60)
        assert time.monotonic() - killed < 10
        deadline = time.monotonic() + 10  # the worker's running band stops at its next tile (no scheduler to ask)
        while os.listdir(out) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert p.returncode == 2 and err.strip().splitlines() == [
        f"error: lost the Dask scheduler at tcp://127.0.0.1:{port} during the run (it stopped, or the network failed): "
        "nothing was written"]
    assert os.listdir(out) == []
