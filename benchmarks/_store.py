"""Finished fits of a benchmark, kept on disk so that a long run can stop and resume.

Every fit's metrics are written to a JSON file beside the tables as soon as the fit finishes (atomically:
an interrupted write leaves the previous file). A rerun with ``--resume`` and the same settings skips the
fits the file already holds, so the default-size runs, which need more hours than one session on a small
machine has, can be finished in pieces; a rerun without it starts the file afresh. Each fit records when
and on which machine it ran, and the tables say how many fits came from earlier runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _report import write_report

__all__ = ["FitStore", "add_store_arguments"]

_FORMAT = 1


@dataclass
class FitStore:
    """The fits of one run configuration, keyed by a caller-chosen string such as ``"D=8/trial=0/nll"``.

    ``settings`` are what must agree for a stored fit to be reused (epochs, sizes, learning rate...).
    """

    path: Path
    settings: dict[str, Any]
    machine: str
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused: int = 0
    train_missing: bool = True
    """False for ``--tables-only``: :meth:`fit` returns ``None`` for a fit the store does not hold."""

    @classmethod
    def open(
        cls, path: Path, settings: dict[str, Any], machine: str, *, resume: bool, tables_only: bool = False
    ) -> FitStore:
        """The store at ``path``: its fits when ``resume`` (or ``tables_only``) and the settings agree, else
        an empty one; with ``tables_only`` it trains nothing.

        Raises ``SystemExit`` naming the file when it cannot be read or was written with other settings.
        """
        if tables_only and not path.exists():
            raise SystemExit(f"--tables-only: {path} does not exist")
        resume = resume or tables_only
        store = cls(path, json.loads(json.dumps(settings)), machine, train_missing=not tables_only)
        if not resume or not path.exists():
            return store
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            stored_settings, fits = stored["settings"], stored["fits"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"--resume: cannot read {path}: {error}") from None
        if stored_settings != store.settings:
            differing = sorted(
                key
                for key in stored_settings.keys() | store.settings.keys()
                if stored_settings.get(key) != store.settings.get(key)
            )
            raise SystemExit(
                f"--resume: {path} was written with other settings ({', '.join(differing)}); "
                "rerun with the same ones or without --resume"
            )
        store.fits = fits
        return store

    def fit(self, key: str, compute: Callable[[], dict[str, float]]) -> dict[str, float] | None:
        """The stored metrics of ``key`` (counted as reused), or ``compute()``'s, recorded at once; ``None``
        for a fit the store lacks when it trains nothing (``--tables-only``)."""
        stored = self.fits.get(key)
        if stored is not None:
            self.reused += 1
            reused: dict[str, float] = stored["metrics"]
            return reused
        if not self.train_missing:
            return None
        metrics = compute()
        date = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"
        self.fits[key] = {"metrics": metrics, "date": date, "machine": self.machine}
        document = {"format": _FORMAT, "settings": self.settings, "fits": self.fits}
        text = json.dumps(document, indent=1, sort_keys=True) + "\n"
        write_report(self.path, text)
        return metrics

    def provenance(self) -> str:
        """One sentence for a report: reused fits, the date range and machines of every stored fit."""
        if not self.reused:
            return "Every fit ran in this invocation."
        dates = sorted(fit["date"] for fit in self.fits.values())
        machines = sorted({fit["machine"] for fit in self.fits.values()})
        return (
            f"{self.reused} fit(s) reused from earlier runs of the same settings (`--resume`, "
            f"`{self.path.name}`); fits dated {dates[0]} to {dates[-1]} on: {'; '.join(machines)}."
        )


def add_store_arguments(parser: argparse.ArgumentParser, default_output: Path, store_name: str) -> None:
    """The ``--output-dir``, ``--resume`` and ``--tables-only`` options of a benchmark that keeps its fits
    in ``store_name``."""
    parser.add_argument(
        "--output-dir", type=Path, default=default_output, help="where to write the tables and figures"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"reuse the fits in OUTPUT_DIR/{store_name} that have the same settings (default: afresh)",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help=f"rewrite the tables from OUTPUT_DIR/{store_name} and train nothing; a fit it lacks is left "
        "out (the method's label says how many trials it has)",
    )
