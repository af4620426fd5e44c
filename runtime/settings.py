"""Load a program's settings from one table of a TOML file, overridden by the environment.

Technicians edit these files by hand, so every mistake must come back as one line that
names the file, the dotted key and what is wrong, e.g.
``config.toml: agent.audio.vad_mode: must be 0..3 (got 7)``. Both programs share this module
so that they report errors alike and there is a single way to read settings.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

KNOWN_TABLES = ("agent", "gateway")

S = TypeVar("S", bound="FileSettings")


class ConfigError(Exception):
    """A configuration problem, already phrased for a person; one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class FileSettings(BaseSettings):
    """Base of each program's settings: the environment overrides the file's values.

    Subclasses set ``env_prefix``, ``env_nested_delimiter="__"`` and ``extra="forbid"``
    in their ``model_config``; the file's table arrives as init keyword arguments.
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings, file_secret_settings)


def default_state_dir(program: str) -> Path:
    """systemd's StateDirectory= when run as a unit, else /var/lib/PROGRAM as root, else a
    per-user directory."""
    if "STATE_DIRECTORY" in os.environ:
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib") / program
    return Path.home() / ".local" / "state" / program


def load_settings(model: type[S], table: str, path: Path | None) -> S:
    """Read ``[table]`` of ``path`` (if any) and the environment into ``model``.

    Raises ConfigError with one line per problem; never a pydantic traceback.
    """
    label = path.name if path is not None else "environment"
    values = _read_table(path, table) if path is not None else {}
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, model, table, label, values)) from None


def _read_table(path: Path, table: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a TOML file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path.name}: invalid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path.name}: invalid TOML: not UTF-8 text"]) from None
    unknown = [name for name in document if name not in KNOWN_TABLES]
    if unknown:
        problems = []
        for name in unknown:
            hint = _suggest(name, KNOWN_TABLES)
            problems.append(f"{path.name}: {name}: unknown table{hint}")
        raise ConfigError(problems)
    section = document.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError([f"{path.name}: {table}: must be a table"])
    return section


def _describe(
    exc: ValidationError, model: type[BaseModel], table: str, label: str, values: dict
) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join((table, *loc))
        source = label if _present(values, loc) else _env_name(model, loc)
        problems.append(f"{source}: {key}: {_message(error, model, loc)}")
    return problems


def _message(error: ErrorDetails, model: type[BaseModel], loc: tuple[str, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = tuple(parent.model_fields) if parent is not None else ()
        return "unknown key" + _suggest(loc[-1], known)
    if kind == "missing":
        return "required"
    got = f" (got {error['input']!r})" if _is_scalar(error.get("input")) else ""
    field = _field_at(model, loc)
    if kind == "string_pattern_mismatch" and field is not None and field.description:
        return f"must be {field.description}{got}"
    bounds = _bounds(field) if field is not None else ""
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"} and bounds:
        return f"must be {bounds}{got}"
    text = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{text}{got}"


def _field_at(model: type[BaseModel], loc: tuple[str, ...]) -> FieldInfo | None:
    parent = _model_at(model, loc[:-1])
    if parent is None or not loc or loc[-1] not in parent.model_fields:
        return None
    return parent.model_fields[loc[-1]]


def _bounds(field: FieldInfo) -> str:
    """Phrase a numeric field's limits as a technician reads them: "0..3", ">= 1", "> 0"."""
    limits: dict[type, Any] = {
        type(item): item for item in field.metadata if isinstance(item, Ge | Gt | Le | Lt)
    }
    if Ge in limits and Le in limits:
        return f"{limits[Ge].ge}..{limits[Le].le}"
    signs = ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"), (Lt, "<", "lt"))
    phrases = [f"{sign} {getattr(limits[k], attr)}" for k, sign, attr in signs if k in limits]
    return " and ".join(phrases)


def _model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        current = fields[part].annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _present(values: dict, loc: tuple[str, ...]) -> bool:
    current: Any = values
    for part in loc:
        if not isinstance(current, dict) or part not in current:
            return False
        current = current[part]
    return True


def chosen_config(file: Path | None, option: Path | None, env_var: str) -> Path | None:
    """The file `config validate [FILE]` checks: FILE, else --config, else $env_var, else
    none (defaults and environment)."""
    if file is not None:
        return file
    if option is not None:
        return option
    return Path(os.environ[env_var]) if os.environ.get(env_var) else None


def value_source(env_prefix: str, key: str, path: Path | None) -> str:
    """Where a dotted key's value comes from, as load_settings names it in its errors:
    the environment wins over the file, the file over the defaults."""
    env = env_prefix + key.replace(".", "__").upper()
    if env in os.environ:
        return f"environment {env}"
    return path.name if path is not None else "defaults"


def _env_name(model: type[BaseModel], loc: tuple[str, ...]) -> str:
    prefix = str(getattr(model, "model_config", {}).get("env_prefix", ""))
    name = prefix + "__".join(loc).upper()
    return f"environment {name}" if name in os.environ else "defaults"


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60
