#!/usr/bin/env python3
"""PromQL bookkeeping for scripts/check-observability.sh (python3 stdlib only).

  check_observability.py exprs                 every PromQL expression of the rules and
                                               dashboards, one JSON object a line
  check_observability.py dashboard-rules FILE  writes the dashboards' (and rules')
                                               expressions, Grafana variables replaced,
                                               as recording rules to FILE for promtool
  check_observability.py rule-count            how many rules the rule files define
  check_observability.py names                 the metric names the expressions use
  check_observability.py consistency URL...    every used metric name is exported by one
                                               of the /metrics URLs (or is a recording-rule
                                               output, or a Prometheus built-in, or a
                                               per-subscription family a service registers:
                                               it has no series before a subscription exists)
  check_observability.py alert-conventions     every alert has severity page|ticket, a
                                               summary, a description and a runbook_url whose
                                               anchor is a heading of docs/runbooks.md
  check_observability.py selftest              the extractor against known cases

The rule files are read with a small YAML reader that understands what
rule files use (`expr:` as a plain, quoted or block scalar); the `rule-count`
command lets the caller compare its count with promtool's.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBS = os.path.join(ROOT, "observability")
RULES_DIR = os.path.join(OBS, "prometheus", "rules")
SERVICES_DIR = os.path.join(ROOT, "services")
DASHBOARDS_DIR = os.path.join(OBS, "grafana", "dashboards")

# Names Prometheus itself creates: they need no exporter.
BUILTIN_NAMES = {
    "up", "ALERTS", "ALERTS_FOR_STATE",
    "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added",
    "scrape_timeout_seconds", "scrape_sample_limit", "scrape_body_size_bytes",
}

# Words that are never metric names when they stand alone.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "start", "end"}
# Followed by a parenthesised list of label names (skipped).
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}

IDENT_START = re.compile(r"[A-Za-z_:]")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[smhdwy]|ms)?(?:\d+(?:[smhdwy]|ms))*")


# ---------------------------------------------------------------- PromQL

def _skip_string(s, i):
    """s[i] opens a string ("...", '...' or `...`); returns the index after it."""
    quote = s[i]
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and quote != "`":
            i += 2
            continue
        if c == quote:
            return i + 1
        i += 1
    raise ValueError("unterminated string")


def _read_string(s, i):
    end = _skip_string(s, i)
    raw = s[i + 1:end - 1]
    if s[i] == "`":
        return raw, end
    return re.sub(r"\\(.)", r"\1", raw), end


def _skip_ws(s, i):
    while i < len(s):
        if s[i].isspace():
            i += 1
        elif s[i] == "#":  # comment to end of line
            while i < len(s) and s[i] != "\n":
                i += 1
        else:
            break
    return i


def _skip_balanced(s, i, open_c, close_c):
    """s[i] == open_c; returns the index after the matching close_c, strings skipped."""
    depth = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        if c == open_c:
            depth += 1
        elif c == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_c}{close_c}")


def _name_matchers(body):
    """Metric names selected with __name__="x" inside a {...} body."""
    names = []
    for m in re.finditer(r'__name__\s*=\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)', body):
        lit = m.group(1)
        names.append(re.sub(r"\\(.)", r"\1", lit[1:-1]) if lit[0] != "`" else lit[1:-1])
    return names


def metric_names(expr):
    """The metric names a PromQL expression selects: identifiers that are not
    functions, aggregations, keywords, label names (inside {...} and the label
    lists of by/without/on/ignoring/group_left/group_right), strings,
    numbers or durations (inside [...] and after offset)."""
    s = expr
    names = []
    i = 0
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            break
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
        elif c == "{":
            end = _skip_balanced(s, i, "{", "}")
            names.extend(_name_matchers(s[i + 1:end - 1]))
            i = end
        elif c == "[":
            i = _skip_balanced(s, i, "[", "]")
        elif c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
            m = NUMBER.match(s, i)
            i = m.end() if m else i + 1
        elif IDENT_START.match(c):
            m = IDENT.match(s, i)
            word = m.group(0)
            i = m.end()
            j = _skip_ws(s, i)
            nxt = s[j] if j < len(s) else ""
            low = word.lower()
            if low in LABEL_LIST_KEYWORDS:
                if nxt == "(":
                    i = _skip_balanced(s, j, "(", ")")
            elif low == "offset":
                # offset [-]DURATION
                j2 = j + 1 if nxt == "-" else j
                m2 = NUMBER.match(s, j2)
                if m2:
                    i = m2.end()
            elif nxt == "(":
                pass  # a function or an aggregation
            elif low in KEYWORDS:
                pass
            elif low in AGGREGATIONS and (nxt == "" or IDENT_START.match(nxt)):
                # "sum by (x) (...)": the aggregation's modifier follows
                pass
            else:
                names.append(word)
        else:
            i += 1
    return names


# ---------------------------------------------------------------- rule files (YAML subset)

def _yaml_scalar(value, following, key_indent):
    """value: the text after `key:` on its line; following: the next lines.
    Returns (scalar, lines consumed)."""
    value = value.rstrip()
    if value[:1] in ("|", ">"):
        block = []
        used = 0
        content_indent = None
        for line in following:
            if line.strip() == "":
                block.append("")
                used += 1
                continue
            ind = len(line) - len(line.lstrip(" "))
            if ind <= key_indent:
                break
            if content_indent is None:
                content_indent = ind
            block.append(line[content_indent:] if ind >= content_indent else line.lstrip())
            used += 1
        while block and block[-1] == "":
            block.pop()
            # trailing blank lines are not part of the scalar (clip/strip)
        joiner = "\n" if value[0] == "|" else " "
        return joiner.join(block), used
    if value.startswith('"'):
        end = _skip_string(value, 0)
        return json.loads(value[:end]), 0
    if value.startswith("'"):
        m = re.match(r"'((?:[^']|'')*)'", value)
        if not m:
            raise ValueError("multi-line single-quoted scalars are not supported")
        return m.group(1).replace("''", "'"), 0
    # plain scalar, possibly continued on more-indented lines; " #" starts a comment
    parts = [re.split(r"\s+#", value, maxsplit=1)[0].strip()]
    used = 0
    for line in following:
        ind = len(line) - len(line.lstrip(" "))
        if line.strip() == "" or ind <= key_indent or line.lstrip().startswith("#"):
            break
        parts.append(re.split(r"\s+#", line.strip(), maxsplit=1)[0])
        used += 1
    return " ".join(p for p in parts if p), used


def rule_entries(path):
    """[(kind, name, expr, line)] for each rule of a rule file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    current = None  # (kind, name, line)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)(-\s+)?(alert|record|expr):\s*(.*)$", line)
        if not m:
            i += 1
            continue
        key_indent = len(m.group(1)) + (len(m.group(2)) if m.group(2) else 0)
        key, rest = m.group(3), m.group(4)
        value, used = _yaml_scalar(rest, lines[i + 1:], key_indent)
        if key in ("alert", "record"):
            current = (key, value, i + 1)
        else:
            kind, name, _ = current if current else ("?", "?", i + 1)
            out.append((kind, name, value, i + 1))
            current = None
        i += 1 + used
    return out


def rule_files():
    return sorted(os.path.join(RULES_DIR, f) for f in os.listdir(RULES_DIR)
                  if f.endswith((".yml", ".yaml")))


# ---------------------------------------------------------------- dashboards

def _dashboard_files():
    return sorted(os.path.join(DASHBOARDS_DIR, f) for f in os.listdir(DASHBOARDS_DIR)
                  if f.endswith(".json"))


def _walk_panels(panels):
    for p in panels or []:
        yield p
        yield from _walk_panels(p.get("panels"))


def _variable_exprs(query):
    """The PromQL inside a Grafana Prometheus variable query."""
    if isinstance(query, dict):
        query = query.get("query", "")
    query = (query or "").strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", query, re.S)
    if m:
        return [m.group(1)]
    m = re.fullmatch(r"label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", query)
    if m:
        return []
    m = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if m:
        return [m.group(1)]
    m = re.fullmatch(r"label_names\((.*)\)", query, re.S)
    if m:
        return [m.group(1)] if m.group(1).strip() else []
    if query.startswith("metrics(") or not query:
        return []
    return [query]


def dashboard_entries(path):
    """[(where, expr)] for each PromQL expression of a dashboard."""
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    out = []
    for p in _walk_panels(d.get("panels")):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append((f'panel {p.get("id")} "{p.get("title", "")}" {t.get("refId", "")}', t["expr"]))
    for v in (d.get("templating") or {}).get("list") or []:
        if v.get("type") == "query":
            for e in _variable_exprs(v.get("query")):
                out.append((f'variable ${v.get("name")}', e))
    for a in (d.get("annotations") or {}).get("list") or []:
        for e in (a.get("expr"), (a.get("target") or {}).get("expr")):
            if e:
                out.append((f'annotation "{a.get("name")}"', e))
    return out


GRAFANA_TIME_VARS = re.compile(r"\$__(?:rate_interval|interval|range)(?:_ms|_s)?\b|\$\{__(?:rate_interval|interval|range)(?::[^}]*)?\}")
GRAFANA_VARS = re.compile(r"\$\{[A-Za-z0-9_]+(?::[^}]*)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]")


def substitute_grafana(expr):
    """Grafana variables replaced by literals so that promtool can parse it:
    time ranges by 1m, everything else ($job, ${datasource}, ...) by a word."""
    expr = GRAFANA_TIME_VARS.sub("1m", expr)
    return GRAFANA_VARS.sub("tributary", expr)


# ---------------------------------------------------------------- all expressions

def all_exprs():
    out = []
    for path in rule_files():
        rel = os.path.relpath(path, ROOT)
        for kind, name, expr, line in rule_entries(path):
            out.append({"source": "rule", "file": rel, "where": f"{kind} {name} (line {line})",
                        "expr": expr, "promql": expr})
    for path in _dashboard_files():
        rel = os.path.relpath(path, ROOT)
        for where, expr in dashboard_entries(path):
            out.append({"source": "dashboard", "file": rel, "where": where,
                        "expr": expr, "promql": substitute_grafana(expr)})
    return out


def recorded_names():
    names = set()
    for path in rule_files():
        for kind, name, _, _ in rule_entries(path):
            if kind == "record":
                names.add(name)
    return names


# ---------------------------------------------------------------- /metrics

def exported_names(text):
    """Metric names a Prometheus text exposition defines: every sample name,
    and for each histogram/summary family its _bucket/_sum/_count (and the
    family name of a summary, whose quantile samples carry it)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
            if m:
                fam, typ = m.group(1), m.group(2)
                if typ in ("histogram", "gaugehistogram"):
                    names.update({fam + "_bucket", fam + "_sum", fam + "_count"})
                elif typ == "summary":
                    names.update({fam, fam + "_sum", fam + "_count"})
                elif typ == "counter":
                    names.add(fam if fam.endswith("_total") else fam + "_total")
                else:
                    names.add(fam)
            continue
        m = IDENT.match(line)
        if m:
            names.add(m.group(0))
    return names


# Families labelled by a name operators choose (dispatch's per-subscription
# series) have no series, and so nothing in /metrics, until the first such
# name exists: a fresh deployment has no subscription. For these only, a
# registration in a service's source stands in for the export.
PER_NAME_LABELS = {"subscription"}
REGISTRATION = re.compile(
    r'\b(counter_vec|gauge_vec|histogram_vec)\(\s*\w+\s*,\s*"([A-Za-z_:][A-Za-z0-9_:]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*&\[([^\]]*)\]',
    re.S)


def per_name_registrations(text):
    """Metric names of the families registered in Rust source TEXT (through
    the platform's counter_vec/gauge_vec/histogram_vec) with a label of
    PER_NAME_LABELS; a histogram as its _bucket, _sum and _count."""
    names = []
    for kind, name, labels in REGISTRATION.findall(text):
        if not PER_NAME_LABELS & set(re.findall(r'"([^"]*)"', labels)):
            continue
        names += [name + s for s in ("_bucket", "_sum", "_count")] if kind == "histogram_vec" else [name]
    return names


def registered_per_name():
    """{name: source file} of the per-name families under services/."""
    found = {}
    for dirpath, _, files in os.walk(SERVICES_DIR):
        for fn in sorted(files):
            if fn.endswith(".rs"):
                path = os.path.join(dirpath, fn)
                with open(path, encoding="utf-8") as f:
                    for name in per_name_registrations(f.read()):
                        found[name] = os.path.relpath(path, ROOT)
    return found


def fetch(url, timeout=5):
    req = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


# ---------------------------------------------------------------- commands

def cmd_exprs():
    for e in all_exprs():
        print(json.dumps(e))


def cmd_rule_count():
    print(sum(len(rule_entries(p)) for p in rule_files()))


def cmd_dashboard_rules(out_path):
    rules = []
    index = []
    for n, e in enumerate(all_exprs()):
        name = f"check:expr_{n}"
        rules.append({"record": name, "expr": e["promql"]})
        index.append(f'{name}: {e["file"]} {e["where"]}')
    # JSON is YAML: promtool reads it as a rule file.
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"groups": [{"name": "dashboards-and-rules", "rules": rules}]}, f, indent=1)
    with open(out_path + ".index", "w", encoding="utf-8") as f:
        f.write("\n".join(index) + "\n")
    print(len(rules))


def used_names():
    """{name: [where, ...]} over all rule and dashboard expressions."""
    used = {}
    for e in all_exprs():
        for name in metric_names(e["promql"]):
            used.setdefault(name, []).append(f'{e["file"]} {e["where"]}')
    return used


def cmd_names():
    for name, wheres in sorted(used_names().items()):
        print(f"{name}\t{len(wheres)}")


def cmd_consistency(urls):
    exported = {}
    unreachable = []
    for url in urls:
        try:
            exported[url] = exported_names(fetch(url))
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            unreachable.append(f"{url} ({reason})")
    defined = set(BUILTIN_NAMES) | recorded_names()
    for names in exported.values():
        defined |= names
    used = used_names()
    not_yet = {n: src for n, src in registered_per_name().items() if n in used and n not in defined}
    missing = {n: w for n, w in used.items() if n not in defined and n not in not_yet}
    problems = []
    if unreachable:
        problems.append("unreachable: " + ", ".join(unreachable))
    if missing:
        problems.append("used but exported by no reachable target: " + ", ".join(sorted(missing)))
    if not problems:
        extra = ""
        if not_yet:
            extra = (f"; {len(not_yet)} per-subscription names with no series yet, registered in "
                     + ", ".join(sorted(set(not_yet.values()))))
        print(f"{len(used)} metric names used, all defined ({len(exported)} targets{extra})")
        return 0
    print("; ".join(problems))
    for n in sorted(missing):
        where = sorted(set(missing[n]))
        print(f"  {n}: used in {len(where)} place(s), e.g. {where[0]}", file=sys.stderr)
    for url, names in exported.items():
        print(f"  {url}: {len(names)} names exported", file=sys.stderr)
    return 1


RUNBOOK_PREFIX = "https://github.com/tributary/tributary/blob/main/docs/runbooks.md#"


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def cmd_alert_conventions():
    with open(os.path.join(ROOT, "docs", "runbooks.md"), encoding="utf-8") as f:
        anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", f.read(), re.M)}
    bad = []
    count = 0
    for path in rule_files():
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # One block per rule: from its "- alert:"/"- record:" line to the next.
        blocks = re.split(r"\n(?=\s*- (?:alert|record):)", text)
        for block in blocks:
            m = re.match(r"\s*- alert:\s*(\S+)", block)
            if not m:
                continue
            count += 1
            name = m.group(1)
            sev = re.search(r"^\s+severity:\s*[\"']?(\w+)", block, re.M)
            if not sev or sev.group(1) not in ("page", "ticket"):
                bad.append(f"{rel}: {name}: labels.severity must be page or ticket")
            for key in ("summary", "description"):
                if not re.search(rf"^\s+{key}:\s*\S", block, re.M):
                    bad.append(f"{rel}: {name}: no annotations.{key}")
            url = re.search(r"^\s+runbook_url:\s*[\"']?(\S+?)[\"']?\s*$", block, re.M)
            if not url:
                bad.append(f"{rel}: {name}: no annotations.runbook_url")
            elif not url.group(1).startswith(RUNBOOK_PREFIX):
                bad.append(f"{rel}: {name}: runbook_url does not start with {RUNBOOK_PREFIX}")
            else:
                anchor = url.group(1)[len(RUNBOOK_PREFIX):]
                if anchor != github_anchor(name):
                    bad.append(f"{rel}: {name}: runbook anchor #{anchor} is not #{github_anchor(name)}")
                if anchor not in anchors:
                    bad.append(f"{rel}: {name}: docs/runbooks.md has no heading for #{anchor}")
    if bad:
        print("\n".join(bad))
        return 1
    print(f"{count} alert rules")
    return 0


def cmd_selftest():
    cases = {
        'sum by (job, service) (rate(tributary_grpc_server_requests_total{code=~"Unavailable|Internal", job="x"}[5m]))':
            ["tributary_grpc_server_requests_total"],
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{le!="+Inf"}[1m:30s] offset 5m)))': ["a_bucket"],
        'x > bool 3 and on (group, topic) group_left (partition) y unless ignoring(instance) z': ["x", "y", "z"],
        'min_over_time(lag[10m]) > 0 and changes(off[10m]) == 0 and (off offset 10m)': ["lag", "off", "off"],
        'sum without (instance) (m) / count(n) or vector(0) * absent(o{a="}{"})': ["m", "n", "o"],
        'topk(5, sum(rate(p[1m])) by (code))': ["p"],
        'count_values("version", build) + {__name__="named_metric", job="j"}': ["build", "named_metric"],
        'q # a comment with not_a_metric\n + 1e3 + 0x1F + 1.5 + inf + NaN': ["q"],
        'service:tributary_grpc_server_error_ratio:rate1h{service="s"} > (14.4 * 0.001)':
            ["service:tributary_grpc_server_error_ratio:rate1h"],
        'sum by (le) (rate(h_bucket[$__rate_interval]))': ["h_bucket"],
        'label_replace(up, "dst", "$1", "src", "(.*)")': ["up"],
        'r @ start() - r @ end() + r @ 1609746000': ["r", "r", "r"],
        'avg by(job)(up{job=~"tributary-.+"}) == 0': ["up"],
    }
    failed = 0
    for expr, want in cases.items():
        got = metric_names(substitute_grafana(expr))
        if got != want:
            failed += 1
            print(f"FAIL {expr!r}: got {got}, want {want}")
    subst = substitute_grafana('rate(x{job=~"$job",a="${datasource}",b="[[v]]",c="${v:regex}"}[$__rate_interval]) offset $__interval')
    want = 'rate(x{job=~"tributary",a="tributary",b="tributary",c="tributary"}[1m]) offset 1m'
    if subst != want:
        failed += 1
        print(f"FAIL substitute: {subst}")
    yaml_text = ("- alert: A\n  expr: |\n    x\n      > 1\n\n  for: 5m\n- record: b:c\n  expr: sum(y) # comment\n"
                 "- record: d\n  expr: \"rate(z{a=\\\"b\\\"}[1m])\"\n- record: e\n  expr: >-\n    w\n    + v\n"
                 "- record: f\n  expr: 'u{a=''b''}'\n- record: g\n  expr: t\n    + s\n  labels: {}\n")
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(yaml_text)
    try:
        got = [(k, n, e) for k, n, e, _ in rule_entries(f.name)]
    finally:
        os.unlink(f.name)
    want = [("alert", "A", "x\n  > 1"), ("record", "b:c", "sum(y)"), ("record", "d", 'rate(z{a="b"}[1m])'),
            ("record", "e", "w + v"), ("record", "f", "u{a='b'}"), ("record", "g", "t + s")]
    if got != want:
        failed += 1
        print(f"FAIL rule_entries: got {got}")
    rust = ('counter_vec(\n registry,\n "a_total",\n "help with \\"quotes\\" [x]",\n &["subscription", "result"],\n)?;'
            ' histogram_vec(registry, "b_seconds", "h", &["subscription"], &[0.1, 1.0])?;'
            ' gauge_vec(registry, "c", "h", &["group"])?; let x = counter_vec(r, "d_total", "h", &[])?;')
    got = per_name_registrations(rust)
    want = ["a_total", "b_seconds_bucket", "b_seconds_sum", "b_seconds_count"]
    if got != want:
        failed += 1
        print(f"FAIL per_name_registrations: got {got}")
    print(f"{len(cases) + 3 - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "exprs":
        cmd_exprs()
    elif cmd == "rule-count":
        cmd_rule_count()
    elif cmd == "dashboard-rules" and len(args) == 1:
        cmd_dashboard_rules(args[0])
    elif cmd == "names":
        cmd_names()
    elif cmd == "consistency" and args:
        return cmd_consistency(args)
    elif cmd == "alert-conventions":
        return cmd_alert_conventions()
    elif cmd == "selftest":
        return cmd_selftest()
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
