"""Read a data pickle without letting it run code.

``pickle.load`` calls whatever function a pickle names (a file whose ``__reduce__`` names
``os.system`` runs a shell command). MMSA feature files only need numpy arrays and scalars inside
dicts, lists and tuples of strings and numbers, so :func:`load_data_pickle` admits exactly the
constructors those need and refuses any other with a :class:`ValueError` naming the file and the
callable, before anything runs. Empty, truncated or foreign files are one ``ValueError`` line too.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

# (module, name) pairs a pickle of numpy arrays, numpy scalars and plain containers refers to.
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")  # numpy 1 and numpy 2 spell the package differently
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
) | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in pickles written by Python 2 (latin-1 text)
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # numpy 2 pickles its dtype classes by name (numpy.dtypes.Float32DType, ...): data, not code.
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it would call {module}.{name}, which a data file never needs")


def load_data_pickle(path: str | os.PathLike[str]) -> Any:
    """The object in ``path``, if it holds only numpy arrays/scalars, dicts, lists, tuples,
    strings and numbers.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file would run code, is empty, truncated, or not a pickle; one line
            naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            return _DataUnpickler(handle).load()
    except pickle.UnpicklingError as error:
        if str(error).startswith("it would call"):
            raise ValueError(f"{path}: refused to load: {error}") from None
        raise ValueError(f"{path}: not a readable pickle ({error})") from None
    except EOFError:
        raise ValueError(f"{path}: not a readable pickle (empty or truncated)") from None
    except (AttributeError, ImportError, IndexError, KeyError, TypeError, ValueError, OverflowError, MemoryError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(f"{path}: not a readable data pickle ({type(error).__name__}: {reason})") from None
