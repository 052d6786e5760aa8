"""The C++ CPU kernels (engine/csrc): build and load them (engine/layers/cpu_stack.py fills the decoder stack).

Built on first use with torch.utils.cpp_extension (the machine's C++ compiler and the ``ninja``
package), for this CPU (-march=native), into ``$GPTSERVE_KERNEL_CACHE`` (default
``~/.cache/gptserve/kernels``), in a folder named by the sources (every file in engine/csrc), torch
version and CPU, so a change to any of them builds afresh. Once the library is there a process
imports it directly, without asking torch's builder, which would rebuild it whenever its
command line differs (another venv's include paths): every clone, install and environment with
the same sources and torch version shares one build. The sources are compiled from a copy inside
that folder. A build takes a minute or more on 2 cores; concurrent processes wait for one build. torch's own build lock is a file
that a killed builder leaves behind, and every later start would wait on it forever, so the build
runs under an ``flock`` of ours (freed by the kernel when its holder dies), which clears such a
leftover before building.

When it cannot be built (no compiler, say) ``load()`` returns None, says why once in the log, and
the model runs its Python path: the C++ stack is an optimization, never a requirement.
``GPTSERVE_CPU_KERNELS=0`` turns it off. ``GPTSERVE_CPU_ISA=avx512|avx2|scalar`` forces the
variant of the block-format kernels (engine/csrc/quant_cpu.h; default: the widest this CPU runs).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import threading
from pathlib import Path

import torch

log = logging.getLogger("gptserve.engine")

_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "llama_cpu.cpp"  # includes the rest of engine/csrc
_lock = threading.Lock()
_module = None
_failed: str | None = None


def enabled_by_env() -> bool:
    return os.environ.get("GPTSERVE_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build_dir() -> tuple[str, Path]:
    key = hashlib.sha256()
    for path in sorted(_SOURCE.parent.iterdir()):  # every file the build reads, so any edit builds afresh
        if path.is_file():
            key.update(path.name.encode())
            key.update(path.read_bytes())
    key.update(torch.__version__.encode())
    key.update(platform.machine().encode())
    key.update(_cpu_id().encode())
    digest = key.hexdigest()[:16]
    root = Path(os.environ.get("GPTSERVE_KERNEL_CACHE", Path.home() / ".cache" / "gptserve" / "kernels"))
    path = root / digest
    path.mkdir(parents=True, exist_ok=True)
    return f"gptserve_llama_cpu_{digest}", path


def _copy_sources(folder: Path) -> Path:
    """engine/csrc copied into ``folder`` (a file rewritten only when it differs: ninja goes by
    modification times); returns the main source's copy."""
    folder.mkdir(exist_ok=True)
    for path in _SOURCE.parent.iterdir():
        if path.is_file():
            copy, data = folder / path.name, path.read_bytes()
            if not copy.exists() or copy.read_bytes() != data:
                copy.write_bytes(data)
    return folder / _SOURCE.name


def _import_built(name: str, folder: Path):
    """The library a finished build left in ``folder``, imported; None when there is none (or it
    does not import: a build killed while linking), so that it gets built."""
    library = folder / f"{name}.so"
    if not library.exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except ImportError as exc:
        log.warning("rebuilding the C++ CPU kernels: %s does not import (%s)", library, exc)
        return None


def load():
    """The compiled module, or None when it cannot be built here (the reason is logged once)."""
    global _module, _failed
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        try:
            import ninja  # the build tool torch's extension builder runs; a PyPI dependency

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            from torch.utils.cpp_extension import load as build

            name, path = _build_dir()
            flags = ["-O3", "-fopenmp", "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native"]
            with open(path / "gptserve.lock", "w") as held:
                fcntl.flock(held, fcntl.LOCK_EX)  # no other live process is building here now
                (path / "lock").unlink(missing_ok=True)  # torch's, left by a builder that was killed
                _module = _import_built(name, path)
                if _module is None:
                    source = _copy_sources(path / "src")
                    _module = build(name=name, sources=[str(source)], extra_cflags=flags,
                                    extra_ldflags=["-fopenmp"], build_directory=str(path), verbose=False)
            isa = os.environ.get("GPTSERVE_CPU_ISA", "").strip().lower()
            if isa:
                log.info("block-format kernels: %s (GPTSERVE_CPU_ISA)", _module.set_isa(isa))
        except Exception as exc:  # no compiler, no ninja, a failed build: the Python path serves
            _failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            log.warning("C++ CPU kernels unavailable, using the Python path (%s)", _failed)
        return _module


def main() -> None:
    """Build now and say where (make install calls it); never fails: the engine falls back."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = load()
    print(f"C++ CPU kernels: {module.__file__}" if module is not None else f"C++ CPU kernels: not built ({_failed})")


if __name__ == "__main__":  # the Makefile runs this file alone: it needs only torch and ninja
    main()
