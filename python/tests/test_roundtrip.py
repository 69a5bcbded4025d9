"""State dicts as PyTorch makes them survive a checkpoint exactly: values, containers, dtypes."""
import collections
import gc
import math

import numpy as np
import pytest
import torch

import shmckpt

TORCH_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
                "float32", "float64", "complex64",
                # Only where this torch has them (not 1.13): mapped when present.
                "float8_e5m2", "float8_e4m3fn", "uint16", "uint32", "uint64"]


def sample(dtype, shape=(3, 5)):
    g = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


def same(a, b):
    return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def save_both(tmp_path, sd):
    """Round trips through the sync (in-process) and the async (child) paths."""
    with shmckpt.SyncCheckpointer() as ck:
        ck.save(tmp_path / "sync", sd)
    with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
        staging, write = ck.save(tmp_path / "async", sd)
        write.result(timeout=60)
    return shmckpt.load(tmp_path / "sync"), shmckpt.load(tmp_path / "async")


@pytest.mark.parametrize("name", TORCH_DTYPES)
def test_every_dtype_round_trips(tmp_path, name):
    if not hasattr(torch, name):
        pytest.skip(f"torch {torch.__version__} has no torch.{name}")
    dtype = getattr(torch, name)
    t = sample(dtype)
    for back in save_both(tmp_path, {"t": t, "scalar": sample(dtype, ())}):
        assert same(back["t"], t)
        assert same(back["scalar"], sample(dtype, ()))


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (), (1,), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_empty_and_zero_dim_tensors_round_trip(tmp_path, shape, dtype):
    t = sample(dtype, shape)
    for back in save_both(tmp_path, {"t": t}):
        assert same(back["t"], t)


def test_non_contiguous_tensors_are_saved_as_their_values(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t": base.t(), "step": base[:, ::2], "expanded": torch.ones(3, 1).expand(3, 4),
          "conj": torch.randn(4, dtype=torch.complex64).conj(), "neg": base.neg()}
    for back in save_both(tmp_path, sd):
        for k, v in sd.items():
            assert same(back[k], v.resolve_conj().contiguous()), k


def test_numpy_arrays_are_accepted(tmp_path):
    sd = {f"a_{d}": (np.arange(12) % 7).astype(d).reshape(3, 4)
          for d in ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32",
                    "float64", "complex64", "uint16", "uint32", "uint64"]}
    sd["big_endian"] = np.arange(5, dtype=">i4")
    sd["strided"] = np.arange(20, dtype=np.float32)[::3]
    sd["zero_dim"] = np.array(2.5)
    sd["scalar"] = np.float32(1.5)
    sd["np_int"] = np.int64(-3)
    for back in save_both(tmp_path, sd):
        for k, v in sd.items():
            if k in ("scalar", "np_int"):
                assert back[k] == v.item() and type(back[k]) is type(v.item())
                continue
            got = back[k]
            # Dtypes torch lacks come back as numpy arrays, the others as torch tensors.
            arr = got if isinstance(got, np.ndarray) else got.numpy()
            assert isinstance(got, np.ndarray) == (k in ("a_uint16", "a_uint32", "a_uint64"))
            assert arr.dtype == v.dtype.newbyteorder("=") and arr.shape == v.shape, k
            assert np.array_equal(arr, v), k


def test_containers_and_scalars_round_trip_exactly(tmp_path):
    sd = {
        "none": None, "yes": True, "no": False, "one": 1, "neg": -(2 ** 63),
        "big": 2 ** 63 - 1, "half": 0.5, "nan": float("nan"), "inf": float("-inf"),
        "negzero": -0.0, "text": "grüße ✓", "empty_str": "",
        "nested": {"a": [1, [2, [3, torch.ones(2)]], {"deep": None}], "empty": {}, "el": []},
        "list_of_tensors": [torch.zeros(2), torch.arange(3)],
    }
    for back in save_both(tmp_path, sd):
        assert back["none"] is None
        assert back["yes"] is True and back["no"] is False
        assert type(back["one"]) is int and back["one"] == 1
        assert back["neg"] == -(2 ** 63) and back["big"] == 2 ** 63 - 1
        assert math.isnan(back["nan"]) and back["inf"] == float("-inf")
        assert math.copysign(1.0, back["negzero"]) == -1.0
        assert back["text"] == "grüße ✓" and back["empty_str"] == ""
        n = back["nested"]
        assert n["a"][0] == 1 and n["a"][1][0] == 2 and n["a"][1][1][0] == 3
        assert same(n["a"][1][1][1], torch.ones(2))
        assert n["a"][2] == {"deep": None} and n["empty"] == {} and n["el"] == []
        assert isinstance(n["a"], list)
        assert same(back["list_of_tensors"][1], torch.arange(3))
        assert list(back) == list(sd)  # key order kept


def test_int_keys_and_tuples_round_trip(tmp_path):
    sd = {"state": {0: {"step": torch.tensor(3.0)}, 5: {"x": 1}, -2: {}},
          "betas": (0.9, 0.999), "nested": ((1, 2), [3, (4,)], ()),
          "size": torch.Size([2, 3]), "str": {"0": "a string key that looks like an int"}}
    for back in save_both(tmp_path, sd):
        assert list(back["state"]) == [0, 5, -2]
        assert all(type(k) is int for k in back["state"])
        assert same(back["state"][0]["step"], torch.tensor(3.0))
        assert back["betas"] == (0.9, 0.999) and type(back["betas"]) is tuple
        assert back["nested"] == ((1, 2), [3, (4,)], ())
        assert type(back["nested"][1]) is list and type(back["nested"][1][1]) is tuple
        assert back["size"] == (2, 3) and type(back["size"]) is tuple
        assert list(back["str"]) == ["0"]


def test_ordered_dicts_keep_their_order(tmp_path):
    od = collections.OrderedDict([("b", torch.ones(1)), ("a", torch.zeros(1))])
    od.move_to_end("b")
    back, _ = save_both(tmp_path, {"m": od})
    assert list(back["m"]) == ["a", "b"]


@pytest.mark.parametrize("bad, where", [
    ({"a": {"b": {1, 2}}}, "'a.b'"),
    ({"a": [0, object()]}, "'a.1'"),
    ({"m": {1: "x", "y": 2}}, "'m'"),
    ({"m": {(1, 2): 3}}, "'m'"),
    ({"big": 2 ** 64}, "'big'"),
    ({"c128": torch.zeros(2, dtype=torch.complex128)}, "'c128'"),
])
def test_unsupported_values_name_their_path(tmp_path, bad, where):
    with shmckpt.SyncCheckpointer() as ck:
        with pytest.raises(shmckpt.InvalidArgumentError, match=where):
            ck.save(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()


def test_loaded_tensors_are_writable_private_views_that_keep_the_file_mapped(tmp_path):
    with shmckpt.SyncCheckpointer() as ck:
        ck.save(tmp_path / "c", {"w": torch.arange(6.0), "x": torch.ones(3)})
    sd = shmckpt.load(tmp_path / "c")
    w = sd["w"]
    del sd
    gc.collect()
    w.add_(1)  # copy-on-write: the file keeps its bytes
    assert torch.equal(w, torch.arange(6.0) + 1)
    assert torch.equal(shmckpt.load(tmp_path / "c")["w"], torch.arange(6.0))


def test_load_into_a_template_fills_its_tensors_in_place(tmp_path):
    with shmckpt.SyncCheckpointer() as ck:
        ck.save(tmp_path / "c", {"m": {"w": torch.arange(6.0).reshape(2, 3),
                                       "t": torch.arange(4.0).reshape(2, 2)}, "step": 7})
    w = torch.zeros(2, 3)
    t_base = torch.zeros(2, 2)
    template = {"m": {"w": w, "t": t_base.t()}, "step": 0}
    ptr = w.data_ptr()
    out = shmckpt.load(tmp_path / "c", template)
    assert out["m"]["w"] is w and w.data_ptr() == ptr
    assert torch.equal(w, torch.arange(6.0).reshape(2, 3))
    assert out["m"]["t"] is template["m"]["t"]  # non-contiguous: copied back into the view
    assert torch.equal(template["m"]["t"], torch.arange(4.0).reshape(2, 2))
    assert out["step"] == 7


def test_load_into_a_template_reports_missing_keys_and_mismatches(tmp_path):
    with shmckpt.SyncCheckpointer() as ck:
        ck.save(tmp_path / "c", {"w": torch.ones(2, 3)})
    with pytest.warns(shmckpt.MissingKeysWarning, match="extra"):
        out = shmckpt.load(tmp_path / "c", {"w": torch.zeros(2, 3), "extra": torch.zeros(1)})
    assert torch.equal(out["w"], torch.ones(2, 3))
    with pytest.raises(shmckpt.NotFoundError, match="extra"):
        shmckpt.load(tmp_path / "c", {"w": torch.zeros(2, 3), "extra": torch.zeros(1)},
                     strict=True)
    w = torch.zeros(2, 4)
    with pytest.raises(shmckpt.InvalidArgumentError, match=r"'w'.*\[2, 3\].*\[2, 4\]"):
        shmckpt.load(tmp_path / "c", {"w": w})
    with pytest.raises(shmckpt.InvalidArgumentError, match="'w'"):
        shmckpt.load(tmp_path / "c", {"w": torch.zeros(2, 3, dtype=torch.float64)})
    assert torch.equal(w, torch.zeros(2, 4))


def test_missing_checkpoint_is_not_found(tmp_path):
    with pytest.raises(shmckpt.NotFoundError) as e:
        shmckpt.load(tmp_path / "nothing")
    assert isinstance(e.value, shmckpt.Error) and e.value.errc == "not_found"
    assert "nothing" in str(e.value)
