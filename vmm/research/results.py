"""A `bench boot` result: the machine it ran on, the settings, and every sample; to and
from JSON (everything) and CSV (one row per sample and metric, for spreadsheets and R).

    {"format": "vmm-bench-boot/1", "started": <unix time>, "finished": ...,
     "machine": {...machine_info...}, "settings": {...}, "skipped": ["why", ...],
     "note": "...", "samples": [ {...samples.py...}, ... ]}
"""
from __future__ import annotations

import csv
import io
import json
import time
from typing import List

from ..errors import ConfigError
from .samples import metrics

FORMAT = "vmm-bench-boot/1"
CSV_FIELDS = ("config", "system", "round", "warmup", "ok", "metric", "ms")


class ResultFileError(ConfigError):
    """A file given as a result is missing, unreadable or not a bench result."""


def new_result(machine: dict, settings: dict, *, skipped=()) -> dict:
    return {"format": FORMAT, "started": time.time(), "finished": None, "machine": machine,
            "settings": settings, "skipped": list(skipped), "note": "", "samples": []}


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1, sort_keys=False)


def write_json(result: dict, path) -> None:
    with open(path, "w") as f:
        f.write(to_json(result))
        f.write("\n")


def read_json(path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ResultFileError(f"result file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultFileError(f"cannot read result file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResultFileError(f"{path} is not a `bench boot` result (no \"format\": \"{FORMAT}\")")
    if not isinstance(data.get("samples"), list):
        raise ResultFileError(f"{path} has no samples list")
    return data


def to_csv(result: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for s in result["samples"]:
        for metric, ms in metrics(s).items():
            w.writerow([s["config"], s["system"], s["round"], int(bool(s["warmup"])),
                        int(bool(s["ok"])), metric, repr(float(ms))])
    return out.getvalue()


def write_csv(result: dict, path) -> None:
    with open(path, "w", newline="") as f:
        f.write(to_csv(result))


def samples_from_csv(text: str) -> List[dict]:
    """The samples' metrics back from CSV, as {config, system, round, warmup, ok, metrics}
    (the rest of a sample lives only in the JSON)."""
    rows = csv.DictReader(io.StringIO(text))
    if rows.fieldnames is None or tuple(rows.fieldnames) != CSV_FIELDS:
        raise ResultFileError(f"not a bench CSV: the header must be {','.join(CSV_FIELDS)}")
    out: dict = {}
    for row in rows:
        key = (row["config"], row["system"], int(row["round"]))
        s = out.setdefault(key, {"config": key[0], "system": key[1], "round": key[2],
                                 "warmup": row["warmup"] == "1", "ok": row["ok"] == "1",
                                 "metrics": {}})
        s["metrics"][row["metric"]] = float(row["ms"])
    return list(out.values())
