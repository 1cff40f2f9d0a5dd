"""A pytest run's JUnit XML as a short Markdown summary: the device, the counts, every skip's
reason, every failure's first line, the slowest tests (for benchmarks/results/)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def summary(path: str) -> str:
    cases = list(ET.parse(path).getroot().iter("testcase"))
    outcome = {}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        found = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome[name] = (found[0].tag if found else "passed",
                         (found[0].get("message") or "").splitlines()[0][:200] if found else "",
                         float(case.get("time") or 0.0))
    counts = {k: sum(1 for o, _, _ in outcome.values() if o == k)
              for k in ("passed", "failure", "error", "skipped")}
    try:
        import jax

        device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    except Exception as err:  # noqa: BLE001 - the summary still says what it can
        device = f"unknown ({type(err).__name__})"
    lines = [f"device: {device}", "",
             f"{counts['passed']} passed, {counts['failure'] + counts['error']} failed, "
             f"{counts['skipped']} skipped", ""]
    for kind, title in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
        rows = [(n, m) for n, (o, m, _) in outcome.items() if o == kind]
        if rows:
            lines += [f"## {title}", *(f"- {n}: {m}" for n, m in rows), ""]
    slowest = sorted(outcome.items(), key=lambda kv: -kv[1][2])[:15]
    lines += ["## slowest", *(f"- {t:.1f} s {n}" for n, (_, _, t) in slowest)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1]))
    sys.exit(0)
