"""Every kernel backend equals the dense reference in value and gradient; the auto rule."""

from __future__ import annotations

import warnings

import pytest
import torch

from alignkit.functional import gaussian_mmd, multimodal_mmd
from alignkit.kernels import dispatch
from alignkit.kernels.backends import blocked, keops

KEOPS_REASON = keops.unavailable_reason()
# Deliberate: skips only where no C++ compiler (or no pykeops) exists, with that reason printed;
# CI installs the keops extra on a machine with g++, so these tests run there.
needs_keops = pytest.mark.skipif(KEOPS_REASON is not None, reason=f"KeOps cannot run here: {KEOPS_REASON}")

# (N, M, d) with N != M, several widths; few distinct widths keep KeOps compilation bounded.
SHAPES = [(130, 70, 3), (64, 150, 17), (200, 200, 64)]
FORMS = [({"sigma": 1.3}, "biased"), ({"sigma": [0.5, 2.0, 6.0]}, "biased"), ({"sigma": 2.5}, "unbiased"), ({"sigma": "median"}, "unbiased")]


def _pair(n: int, m: int, d: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(n + m + d)
    x = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(True)
    y = (torch.randn(m, d, generator=g, dtype=dtype) * 1.2 + 0.3).requires_grad_(True)
    return x, y


def _value_and_grads(backend: str, x: torch.Tensor, y: torch.Tensor, options: dict, estimator: str):
    value = gaussian_mmd(x, y, estimator=estimator, backend=backend, **options)
    grad_x, grad_y = torch.autograd.grad(value, [x, y])
    return value.detach(), grad_x, grad_y


def _assert_agree(backend: str, shape, form, dtype, rtol: float, atol: float) -> None:
    x, y = _pair(*shape, dtype)
    options, estimator = form
    # Bandwidths relative to the typical distance (~sqrt(2 d)), so that no kernel underflows.
    scale = (2 * shape[2]) ** 0.5 / 2
    sigma = options["sigma"]
    if sigma != "median":
        options = {"sigma": [s * scale for s in sigma] if isinstance(sigma, list) else sigma * scale}
    reference = _value_and_grads("dense", x, y, options, estimator)
    result = _value_and_grads(backend, x, y, options, estimator)
    for expected, got in zip(reference, result):
        assert torch.allclose(got, expected, rtol=rtol, atol=atol * float(expected.abs().max().clamp_min(1e-30)))


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 32 rows so that every shape spans several tiles, diagonal and off-diagonal."""
    monkeypatch.setattr(blocked, "TILE", 32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"{f[0]['sigma']}-{f[1]}" if isinstance(f, tuple) else None)
def test_blocked_equals_dense_in_float64(shape, form, small_tiles) -> None:
    _assert_agree("blocked", shape, form, torch.float64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"{f[0]['sigma']}-{f[1]}" if isinstance(f, tuple) else None)
def test_blocked_equals_dense_to_float32_round_off(shape, form, small_tiles) -> None:
    _assert_agree("blocked", shape, form, torch.float32, rtol=2e-4, atol=1e-5)


@needs_keops
# Each width and dtype is three more KeOps compilations (~12-15 s each on a 2-core CPU): float32
# gets the largest width of SHAPES (a DecAlign width), float64 below the smallest; the blocked
# tests above keep all three.
@pytest.mark.parametrize("shape", [SHAPES[-1]])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"{f[0]['sigma']}-{f[1]}" if isinstance(f, tuple) else None)
def test_keops_equals_dense_to_float32_round_off(shape, form) -> None:
    _assert_agree("keops", shape, form, torch.float32, rtol=2e-4, atol=1e-5)


@needs_keops
def test_keops_equals_dense_in_float64() -> None:
    _assert_agree("keops", SHAPES[0], FORMS[1], torch.float64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["blocked", *(["keops"] if KEOPS_REASON is None else [])])
def test_multimodal_mmd_agrees_across_backends(backend: str) -> None:
    feats = [torch.randn(90 + 10 * i, 3, dtype=torch.float64) + i for i in range(3)]
    assert torch.allclose(multimodal_mmd(feats, 1.0, backend=backend), multimodal_mmd(feats, 1.0, backend="dense"), rtol=1e-9)


def test_blocked_gradient_wrt_one_input_only(small_tiles) -> None:
    x, y = _pair(50, 40, 4, torch.float64)
    y = y.detach()
    for backend in ("dense", "blocked"):
        value = gaussian_mmd(x, y, 1.0, backend=backend)
        (grad,) = torch.autograd.grad(value, x)
        if backend == "dense":
            expected = grad
    assert torch.allclose(grad, expected, rtol=1e-10)


@pytest.mark.parametrize(
    ("n", "m", "device", "expected"),
    [
        (100, 100, "cpu", "dense"),
        (128, 128, "cpu", "dense"),
        (129, 128, "cpu", "blocked"),
        (100_000, 100_000, "cpu", "blocked"),
        (1024, 1024, "cuda", "dense"),
        (1025, 1024, "cuda", "blocked"),
    ],
)
def test_auto_rule_table(n: int, m: int, device: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.resolve_backend("auto", n, m, device) == expected


def test_auto_leaves_keops_to_an_explicit_request_even_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked beat KeOps on the H200 at 16k and 100k, so ``auto`` does not pick it."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(keops, "unavailable_reason", lambda device_type="cpu": None)
    assert dispatch.resolve_backend("auto", 50_000, 50_000, "cuda") == "blocked"
    assert dispatch.resolve_backend("keops", 50_000, 50_000, "cuda") == "keops"


def test_environment_variable_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "blocked")
    assert dispatch.resolve_backend("auto", 10, 10, "cpu") == "blocked"
    assert dispatch.resolve_backend("dense", 10, 10, "cpu") == "dense"  # explicit choices win
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        dispatch.resolve_backend("auto", 10, 10, "cpu")


def test_keops_failure_under_auto_falls_back_to_blocked_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ModuleNotFoundError("pykeops_cpp_deadbeef")

    monkeypatch.setattr(keops, "gaussian_kernel_sum", broken)
    monkeypatch.setattr(dispatch, "_KEOPS_FAILED", [])
    monkeypatch.setenv(dispatch.ENV_VAR, "keops")
    x, y = _pair(30, 20, 3, torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = gaussian_mmd(x, y, 1.0)
        second = gaussian_mmd(x, y, 1.0)
    assert len([w for w in caught if "falls back" in str(w.message)]) == 1
    assert len(calls) == 1  # the second call does not try KeOps again
    expected = gaussian_mmd(x, y, 1.0, backend="blocked")
    assert torch.allclose(first, expected) and torch.allclose(second, expected)


def test_explicit_keops_without_keops_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keops, "unavailable_reason", lambda device_type="cpu": "no C++ compiler (g++) on PATH")
    x, y = _pair(10, 10, 2, torch.float64)
    with pytest.raises(keops.KeOpsUnavailable, match="g\\+\\+"):
        gaussian_mmd(x, y, 1.0, backend="keops")


@needs_keops  # the probe is reached only after the compiler and pykeops checks pass
def test_cuda_probe_turns_a_crashing_keops_into_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe runs in a child process: a segmentation fault there (as KeOps 2.3 gave with
    CUDA 13.0) becomes a reason string here; a probe that succeeds means KeOps runs."""
    probe = keops.unavailable_reason.__wrapped__
    monkeypatch.setattr(keops, "_CUDA_PROBE", "import os, signal; print('[KeOps] compiling'); os.kill(os.getpid(), signal.SIGSEGV)")
    assert probe("cuda") == (
        "a KeOps CUDA reduction failed in a probe process (signal 11: [KeOps] compiling); "
        "try starting Python with LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6)"
    )
    monkeypatch.setattr(keops, "_CUDA_PROBE", "import sys; print('no GPU'); sys.exit(1)")
    assert probe("cuda") == "a KeOps CUDA reduction failed in a probe process (exit status 1: no GPU)"
    monkeypatch.setattr(keops, "_CUDA_PROBE", "import sys; sys.exit(0)")
    assert probe("cuda") is None


def _age(path, seconds: float) -> None:
    import os
    import time

    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_remove_unfinished_builds_takes_only_old_formulas_without_their_info_file(tmp_path) -> None:
    finished = ["0d17d28345.cpp", "0d17d28345.nfo", "pykeops_cpp_0d17d28345.cpython-311-x86_64-linux-gnu.so"]
    died_on_cpu = ["11205bc37e.cpp", "pykeops_cpp_11205bc37e.cpython-311-x86_64-linux-gnu.so"]
    died_on_gpu = ["6508bb494a.cu", "cubin_6508bb494a"]
    compiling_now = ["7b9a611f7e.cpp"]
    other = ["nvrtc_jit.so", "pykeops_nvrtc.cpython-311-x86_64-linux-gnu.so", "keops_hash.log"]
    for name in finished + died_on_cpu + died_on_gpu + compiling_now + other:
        (tmp_path / name).write_text("x")
        if name not in compiling_now:
            _age(tmp_path / name, 3600)
    assert keops.remove_unfinished_builds(tmp_path) == ["11205bc37e", "6508bb494a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(finished + compiling_now + other)
    assert keops.remove_unfinished_builds(tmp_path / "absent") == []


@pytest.mark.parametrize("engine_there", [False, True])
def test_set_build_folder_moves_the_cuda_kernels_and_their_engine(tmp_path, monkeypatch, engine_there: bool) -> None:
    """pykeops 2.3's CUDA compiler module keeps the folder it saw at import; ours must follow, with
    its NVRTC engine built there when missing, before pykeops.set_build_folder moves the rest."""
    import os
    import sys
    import types

    # Deliberate: without pykeops there is no folder to set (CI installs it, so this runs there).
    pykeops = pytest.importorskip("pykeops")
    folder = str(tmp_path / "keops")
    events = []
    gpu_compiler = types.SimpleNamespace(build_folder="/the/import-time/folder")
    gpu_compiler.jit_compile_dll = lambda: os.path.join(gpu_compiler.build_folder, "nvrtc_jit.so")
    gpu_compiler.Gpu_link_compile = types.SimpleNamespace(compile_jit_compile_dll=lambda: events.append(("engine", gpu_compiler.jit_compile_dll())))
    monkeypatch.setitem(sys.modules, keops._GPU_COMPILER_MODULE, gpu_compiler)
    monkeypatch.setattr(pykeops, "set_build_folder", lambda path: events.append(("pykeops", path, gpu_compiler.build_folder)))
    if engine_there:
        os.makedirs(folder)
        (tmp_path / "keops" / "nvrtc_jit.so").write_text("x")
    keops.set_build_folder(tmp_path / "keops")
    assert gpu_compiler.build_folder == folder
    engine = [] if engine_there else [("engine", os.path.join(folder, "nvrtc_jit.so"))]
    assert events == [*engine, ("pykeops", folder, folder)]


@needs_keops
def test_a_build_folder_left_by_a_crashed_compile_works_again(tmp_path) -> None:
    """A formula whose ``.nfo`` is missing (its compile died) breaks every later use with a
    FileNotFoundError until ``unavailable_reason`` (run before KeOps is used) clears it."""
    import pykeops

    previous = pykeops.get_build_folder()
    keops.set_build_folder(tmp_path)
    try:
        x = torch.randn(20, 3, dtype=torch.float64)
        expected = gaussian_mmd(x, x + 1, 1.0, backend="dense")
        torch.testing.assert_close(gaussian_mmd(x, x + 1, 1.0, backend="keops"), expected)
        infos = list(tmp_path.glob("*.nfo"))
        assert infos
        for info in infos:
            info.unlink()
        for path in tmp_path.iterdir():
            _age(path, 3600)
        keops.unavailable_reason.cache_clear()
        assert keops.unavailable_reason("cpu") is None
        assert not any(info.stem in path.name for info in infos for path in tmp_path.iterdir())
        torch.testing.assert_close(gaussian_mmd(x, x + 1, 1.0, backend="keops"), expected)
    finally:
        keops.set_build_folder(previous)
        keops.unavailable_reason.cache_clear()
