#!/usr/bin/env python3
"""Helpers of hack/dashboard-preview.sh (docs/telemetry.md, "Dashboard").

  dashboard_preview.py collector-config IN OUT GRPC HTTP PROM HEALTH
      the collector config Mahler rendered (the environment's ConfigMap),
      bound to local ports, k8s_attributes through the kubeconfig
  dashboard_preview.py load URL SECONDS
      OTLP/HTTP traces of three services (api, web, worker), each with its
      own rate, error ratio and latency, as SDKs would send them
  dashboard_preview.py render DASHBOARD PROMETHEUS START END OUT.html
      every panel's queries through Prometheus' query_range, drawn as SVG
      in the dashboard's grid: a preview of the panels, not Grafana
"""

import html
import json
import random
import sys
import time
import urllib.parse
import urllib.request

import yaml


def collector_config(src, out, grpc, http, prom, health):
    c = yaml.safe_load(open(src))
    c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = f"127.0.0.1:{grpc}"
    c["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = f"127.0.0.1:{http}"
    c["exporters"]["prometheus"]["endpoint"] = f"127.0.0.1:{prom}"
    c["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{health}"
    c["processors"]["k8s_attributes"]["auth_type"] = "kubeConfig"
    c["service"]["telemetry"] = {"metrics": {"level": "none"}}
    # Span metrics every 5 s (15 s in the cluster), so a short run has points.
    c["connectors"]["span_metrics"]["metrics_flush_interval"] = "5s"
    yaml.safe_dump(c, open(out, "w"))


# name: (spans per second, error ratio, median latency in ms)
SERVICES = {"api": (30, 0.02, 40), "web": (18, 0.005, 90), "worker": (6, 0.08, 250)}


def load(url, seconds):
    end = time.time() + seconds
    rnd = random.Random(7)
    while time.time() < end:
        # Load that changes over the run: a slow wave on each service's rate.
        phase = (time.time() % 120) / 120
        spans_by_service = {}
        for name, (rate, errors, median) in SERVICES.items():
            n = max(1, int(rate * (0.6 + 0.8 * abs(phase - 0.5) * 2)))
            spans = []
            for _ in range(n):
                now = time.time_ns()
                ms = rnd.lognormvariate(0, 0.6) * median
                failed = rnd.random() < errors * (3 if phase > 0.8 else 1)
                spans.append({
                    "traceId": "%032x" % rnd.getrandbits(128),
                    "spanId": "%016x" % rnd.getrandbits(64),
                    "name": f"GET /{name}",
                    "kind": 2,
                    "startTimeUnixNano": str(now - int(ms * 1e6)),
                    "endTimeUnixNano": str(now),
                    "status": {"code": 2 if failed else 1},
                })
            spans_by_service[name] = spans
        body = {"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": name}}]},
            "scopeSpans": [{"spans": spans}],
        } for name, spans in spans_by_service.items()]}
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        time.sleep(1)


def panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def query_range(prom, expr, start, end, step):
    expr = (expr.replace("$__rate_interval", "30s")
            .replace('=~"$environment"', '=~".*"').replace('=~"$service"', '=~".*"'))
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        data = json.load(r)
    if data["status"] != "success":
        raise SystemExit(f"query failed: {expr}: {data}")
    return data["data"]["result"]


COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a"]


def unit_fmt(unit, v):
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "ms":
        return f"{v:.0f} ms"
    if unit == "s":
        return f"{v:.2f} s" if v < 10 else f"{v:.0f} s"
    if unit in ("reqps", "ops"):
        return f"{v:.2g}/s" if v < 10 else f"{v:.0f}/s"
    return f"{v:.3g}"


def legend(fmt, metric):
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def svg_chart(series, unit, start, end, w, h):
    pad_l, pad_b, pad_t, pad_r = 64, 22, 8, 10
    pts = [(t, v) for s in series for t, v in s["values"]]
    if not pts:
        return f'<svg width="{w}" height="{h}"><text x="{w/2}" y="{h/2}" fill="#888" text-anchor="middle">No data</text></svg>'
    vmax = max(v for _, v in pts) or 1
    vmin = min(0, min(v for _, v in pts))
    x = lambda t: pad_l + (t - start) / (end - start) * (w - pad_l - pad_r)
    y = lambda v: pad_t + (1 - (v - vmin) / (vmax - vmin)) * (h - pad_t - pad_b)
    parts = [f'<svg width="{w}" height="{h}" font-size="11" font-family="sans-serif">']
    for i in range(5):
        v = vmin + (vmax - vmin) * i / 4
        parts.append(f'<line x1="{pad_l}" x2="{w - pad_r}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#2c3235"/>')
        parts.append(f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" fill="#9fa7b3" text-anchor="end">{unit_fmt(unit, v)}</text>')
    for i in range(5):
        t = start + (end - start) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text x="{x(t):.1f}" y="{h - 6}" fill="#9fa7b3" text-anchor="{anchor}">{time.strftime("%H:%M", time.gmtime(t))}</text>')
    for i, s in enumerate(series):
        c = COLORS[i % len(COLORS)]
        d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s["values"])
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{d}"/>')
    parts.append("</svg>")
    return "".join(parts)


def render(dashboard, prom, start, end, out):
    d = json.load(open(dashboard))
    start, end = float(start), float(end)
    unit_px, col_px = 30, 1400 / 24
    cells = []
    for p in panels(d):
        g = p["gridPos"]
        style = f"grid-column:{g['x'] + 1}/span {g['w']};grid-row:{g['y'] + 1}/span {g['h']}"
        if p["type"] == "row":
            cells.append(f'<div class="row" style="{style}">{html.escape(p["title"])}</div>')
            continue
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for t in p["targets"]:
            for r in query_range(prom, t["expr"], start, end, 15):
                vals = [(float(ts), float(v)) for ts, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if vals:
                    series.append({"name": legend(t.get("legendFormat", ""), r["metric"]), "values": vals})
        w, h = int(g["w"] * col_px) - 16, g["h"] * unit_px - 58
        keys = "".join(
            f'<span><i style="background:{COLORS[i % len(COLORS)]}"></i>{html.escape(s["name"])}</span>'
            for i, s in enumerate(series[:8]))
        cells.append(
            f'<div class="panel" style="{style}"><div class="title">{html.escape(p["title"])}</div>'
            f'{svg_chart(series, unit, start, end, w, h)}<div class="legend">{keys}</div></div>')
    span = f'{time.strftime("%Y-%m-%d %H:%M", time.gmtime(start))}–{time.strftime("%H:%M", time.gmtime(end))} UTC'
    page = f"""<!doctype html><meta charset="utf-8"><style>
body {{ background:#111217; color:#ccccdc; font-family:sans-serif; margin:0; padding:12px; width:1400px }}
h1 {{ font-size:16px; margin:4px 0 2px }} .note {{ color:#f2cc0c; font-size:12px; margin-bottom:10px }}
.grid {{ display:grid; grid-template-columns:repeat(24, 1fr); grid-auto-rows:{unit_px}px; gap:6px }}
.panel {{ background:#181b1f; border:1px solid #2c3235; border-radius:3px; padding:4px 6px; overflow:hidden }}
.title {{ font-size:13px; font-weight:600; margin:2px 0 4px }}
.row {{ font-size:14px; font-weight:600; padding-top:8px }}
.legend {{ font-size:11px; display:flex; flex-wrap:wrap; gap:2px 12px }}
.legend i {{ display:inline-block; width:12px; height:3px; margin:0 4px 3px 0; vertical-align:middle }}
</style><h1>{html.escape(d["title"])} dashboard: preview</h1>
<div class="note">Preview, not Grafana: each panel of charts/mahler/dashboards/mahler.json drawn from Prometheus query_range
results of a real run ({span}; hack/dashboard-preview.sh). $__rate_interval = 30s, all environments and services.</div>
<div class="grid">{"".join(cells)}</div>"""
    open(out, "w").write(page)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "collector-config":
        collector_config(*args)
    elif cmd == "load":
        load(args[0], float(args[1]))
    elif cmd == "render":
        render(*args)
    else:
        raise SystemExit(__doc__)
