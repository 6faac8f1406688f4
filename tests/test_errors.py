"""One error base: every exception class R2F defines derives from R2FError (the CLI catches that
alone and exits with its exit_code), and no two share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import r2f
from r2f.errors import R2FError


def _project_exceptions() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(r2f.__path__, "r2f."):
        if info.name.endswith(".__main__"):  # `python -m r2f.cli`: runs the CLI when imported
            continue
        mod = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("r2f."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_project_error_derives_from_the_base():
    errors = _project_exceptions()
    assert len(errors) >= 17
    assert [e.__qualname__ for e in errors if not issubclass(e, R2FError)] == []
    names = [e.__qualname__ for e in errors]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert all(isinstance(e.exit_code, int) and e.exit_code > 0 for e in errors)


def test_bad_input_errors_stay_value_errors():
    from r2f.config import ConfigError
    from r2f.engine.data import DataError
    from r2f.engine.models.io import ModelError
    from r2f.governance.requests import RequestError

    for e in (ConfigError, DataError, ModelError, RequestError):
        assert issubclass(e, ValueError) and issubclass(e, R2FError)
