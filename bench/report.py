"""Write a benchmark result in the one shape docs/design.md §7 fixes, print it, save it.

    from bench.report import write_report
    write_report("rollout", params={...}, metric="trajectories_per_s", ours=41.0,
                 baseline=4.9, baseline_name="sequential loop", details={...})

``ratio`` is ours ÷ baseline, or baseline ÷ ours when ``lower_is_better`` (a latency), so > 1
always means we are better. Results land in ``bench-results/<bench>.json`` (git-ignored).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def machine() -> dict[str, Any]:
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpus": os.cpu_count(), "gpu": gpu}


def write_report(
    bench: str,
    *,
    params: dict[str, Any],
    metric: str,
    ours: float,
    baseline: float,
    baseline_name: str,
    details: dict[str, Any] | None = None,
    lower_is_better: bool = False,
    out_dir: str | Path = "bench-results",
) -> dict[str, Any]:
    if lower_is_better:
        ratio = baseline / ours if ours else float("inf")
    else:
        ratio = ours / baseline if baseline else float("inf")
    report = {
        "bench": bench,
        "machine": machine(),
        "params": params,
        "headline": {
            "metric": metric,
            "ours": round(float(ours), 4),
            "baseline": round(float(baseline), 4),
            "ratio": round(float(ratio), 3),
            "baseline_name": baseline_name,
        },
        "details": details or {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (out / f"{bench}.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return report
