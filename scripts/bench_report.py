"""What the bench scripts share when they turn `wsrelay bench --json` runs
into a section of docs/BENCHMARKS.md: loading runs, medians, and putting a
section in place."""

import glob
import json
import re
import statistics


def load(out, name, variant):
    """Every run saved as OUT/NAME.VARIANT.N.json, in run order."""
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}.{variant}.*.json"))]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def ns(rs):
    """The relay's CPU ns per delivery, median."""
    return med([r["server"]["cpu_ns_per_delivery"] for r in rs if r.get("server")])


def dps(rs):
    return med([r["deliveries_per_second"] for r in rs])


def lost(rs):
    """Messages lost, reordered or malformed, over all runs."""
    return sum(r["lost"] + r["reorders"] + r["malformed"] for r in rs)


def rss(rs):
    """The relay's RSS per connection, median."""
    return med([r["server"]["rss_per_connection_bytes"] for r in rs if r.get("server")])


def replace_section(path, name, section):
    """Puts `section` between its <!-- NAME:begin ... --> and <!-- NAME:end -->
    markers in the file at `path`, or at its end."""
    text = open(path).read()
    pattern = re.compile(rf"<!-- {name}:begin.*?<!-- {name}:end -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(path, "w").write(text)
