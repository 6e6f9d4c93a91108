"""Flags and ``BENCH_*`` variables for a benchmark's config dataclass, shared by every benchmark's command line."""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

C = TypeVar("C")


def add_options(
    parser: argparse.ArgumentParser, config: Any, group_title: str | None = None, skip: Collection[str] = ()
) -> None:
    """One ``--flag`` per field of a config dataclass (but those in ``skip``), documenting its env variable."""
    group = parser.add_argument_group(group_title) if group_title else parser
    for field in fields(config):
        if field.name in skip:
            continue
        env = f"BENCH_{field.name.upper()}"
        default = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(env {env}; default {default})",
            )
        else:
            group.add_argument(
                flag, type=type(default), default=None, metavar="N", help=f"(env {env}; default {default})"
            )


def config_from(config: C, args: argparse.Namespace, quick: Mapping[str, Any]) -> C:
    """The config with, from weakest to strongest: its defaults, ``--quick``, the environment, the flags."""
    values: dict[str, Any] = dict(quick) if getattr(args, "quick", False) else {}
    for field in fields(config):  # type: ignore[arg-type]
        default = getattr(config, field.name)
        env = os.environ.get(f"BENCH_{field.name.upper()}")
        if env is not None:
            values[field.name] = (
                env.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(env)
            )
        flag = getattr(args, field.name, None)
        if flag is not None:
            values[field.name] = flag
    return replace(config, **values)  # type: ignore[type-var]
