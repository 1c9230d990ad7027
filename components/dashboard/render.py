"""Pages for the Kubeflow Pipelines dashboard (and the same files locally): pure functions of
the records, plans and reports the executors already have, free of TFX.

KFP's Markdown viewer renders GitHub-flavoured tables; its HTML viewer shows one
self-contained page (so pictures are embedded as base64 data URIs: it cannot fetch files that
sit beside the artifact).
"""

from __future__ import annotations

import base64
import collections
import html
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# Quarantined cases listed one per row in the inventory page; the rest are counted by reason.
MAX_LISTED_CASES = 50


def _cell(text: object) -> str:
    """Text safe inside one markdown table cell (no pipe or newline breaks the row)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def inventory_markdown(records: Sequence[Mapping[str, str]], max_listed: int = MAX_LISTED_CASES) -> str:
    """The ingestion inventory as markdown: counts, quarantine reasons with their counts, and
    the first `max_listed` quarantined cases with their reason.

    records: ImageExampleGen's inventory records {"case_id", "status": "ok"|"quarantined",
    "reason", ...}. Input paths are left out (folder names may come from patients); case ids
    and reasons are already free of patient identifiers (cases.process_case).
    """
    quarantined = [r for r in records if r["status"] != "ok"]
    lines = [
        "# Inventory",
        "",
        f"- cases: {len(records)}: {len(records) - len(quarantined)} ingested, {len(quarantined)} quarantined",
    ]
    if not quarantined:
        return "\n".join(lines) + "\n"
    by_reason = collections.Counter(r["reason"] for r in quarantined)
    lines += ["", "## Quarantine reasons", "", "| cases | reason |", "|---|---|"]
    lines += [f"| {n} | {_cell(reason)} |" for reason, n in by_reason.most_common()]
    lines += ["", "## Quarantined cases", "", "| case | reason |", "|---|---|"]
    lines += [f"| {_cell(r['case_id'])} | {_cell(r['reason'])} |" for r in quarantined[:max_listed]]
    if len(quarantined) > max_listed:
        lines += ["", f"... and {len(quarantined) - max_listed} more (inventory.json in the examples artifact)"]
    return "\n".join(lines) + "\n"


def plan_markdown(fingerprint_markdown: str, plan_table: str) -> str:
    """The fingerprint summary (modules.plan.fingerprint.to_markdown) followed by the plan's
    table (modules.plan.planner.describe, fixed-width text: kept as a code block)."""
    return fingerprint_markdown.rstrip("\n") + "\n\n# Plan\n\n```\n" + plan_table.rstrip("\n") + "\n```\n"


def anomalies_markdown(anomalies: Optional[Mapping[str, Sequence[Tuple[str, str]]]]) -> str:
    """A "Data validation" section: per split, each anomalous feature with its description.

    anomalies: {split: [(feature or "(dataset)", description), ...]} as read from
    ExampleValidator's output; None when the DAG has no validator (the section says so).
    """
    lines = ["## Data validation (ExampleValidator)", ""]
    if anomalies is None:
        return "\n".join(lines + ["not run"]) + "\n"
    rows = [(split, feature, text) for split, found in sorted(anomalies.items()) for feature, text in found]
    if not rows:
        splits = ", ".join(sorted(anomalies)) or "no split"
        return "\n".join(lines + [f"no anomalies ({splits})"]) + "\n"
    lines += ["| split | feature | anomaly |", "|---|---|---|"]
    lines += [f"| {_cell(s)} | {_cell(f)} | {_cell(t)} |" for s, f, t in rows]
    return "\n".join(lines) + "\n"


def html_page(title: str, markdown_text: str, pictures: Iterable[Tuple[str, str, bytes]] = ()) -> str:
    """One self-contained HTML page: `markdown_text` rendered (tables, code blocks) followed by
    each picture embedded as a base64 PNG with its caption.

    pictures: (file name, caption, PNG bytes), in the order shown.
    """
    import markdown  # Python-Markdown (a TensorBoard dependency): tables and fenced code

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    figures: List[str] = []
    for name, caption, png in pictures:
        data = base64.b64encode(png).decode("ascii")
        figures.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(name)}</b>: {html.escape(caption)}</figcaption></figure>"
        )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:72em;margin:1em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}figure{margin:1.5em 0}</style></head>\n<body>\n"
        + body
        + ("\n<h2>Pictures</h2>\n" + "\n".join(figures) if figures else "")
        + "\n</body></html>\n"
    )


def finite_metrics(values: Mapping[str, Optional[float]]) -> Dict[str, float]:
    """values without None, NaN and infinities (KFP's metadata is JSON), as floats."""
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
