"""Puts a report printed by bench/run.sh into BENCHMARKS.md, between its markers.

Usage: bench/run.sh > /tmp/report.md && python3 bench/into-doc.py /tmp/report.md BENCHMARKS.md

Invariant: the text between `<!-- bench:begin -->` and `<!-- bench:end -->` is exactly the
script's output; nothing in it is typed by hand.
"""
import datetime
import sys

report, doc = sys.argv[1], sys.argv[2]
text = open(doc).read()
begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
body = open(report).read().strip()
open(doc, "w").write(f"{head}{begin}\n_Run of {stamp}._\n\n{body}\n{end}{tail}")
