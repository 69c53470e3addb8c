"""SVG charts without a plotting library, shared by the experiment reports (Tools/experiments_report.py,
Tools/experiments_pretrained_report.py): line charts of curves and passkey heatmaps."""
import math

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def binned(curve, width):
    return [(s + width / 2, sum(curve[s:s + width]) / len(curve[s:s + width])) for s in range(0, len(curve), width)]


def line_chart(title, series, xlabel, ylabel, vlines=(), ymax=None, width=980, height=440):
    """series: [(label, [(x, y)…])]; vlines: [(x, label)]."""
    L, Rm, T, B = 64, 330, 34, 48
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts if math.isfinite(y)]
    x0, x1 = 0, max(xs)
    y0 = math.floor(min(ys) * 10) / 10
    y1 = ymax if ymax else math.ceil(max(ys) * 10) / 10
    if y1 <= y0:
        y1 = y0 + 1
    X = lambda x: L + (width - L - Rm) * (x - x0) / (x1 - x0)
    Y = lambda y: T + (height - T - B) * (1 - (min(max(y, y0), y1) - y0) / (y1 - y0))
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{(L + width - Rm) / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        s.append(f'<line x1="{L}" x2="{width - Rm}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e4e4e4"/>')
        s.append(f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i in range(5):
        v = x0 + (x1 - x0) * i / 4
        s.append(f'<text x="{X(v):.1f}" y="{height - B + 16}" text-anchor="middle">{v:.0f}</text>')
    for x, label in vlines:
        s.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{T}" y2="{height - B}" stroke="#999" stroke-dasharray="4,3"/>')
        s.append(f'<text x="{X(x) + 3:.1f}" y="{T + 12}" fill="#666">{label}</text>')
    s.append(f'<text x="{(L + width - Rm) / 2}" y="{height - 10}" text-anchor="middle">{xlabel}</text>')
    s.append(f'<text x="14" y="{(T + height - B) / 2}" transform="rotate(-90 14 {(T + height - B) / 2})" text-anchor="middle">{ylabel}</text>')
    for i, (label, pts) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts if math.isfinite(y))
        s.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{path}"/>')
        s.append(f'<line x1="{width - Rm + 10}" x2="{width - Rm + 30}" y1="{T + 10 + 18 * i}" y2="{T + 10 + 18 * i}" stroke="{c}" stroke-width="2.5"/>')
        s.append(f'<text x="{width - Rm + 35}" y="{T + 14 + 18 * i}">{label}</text>')
    return "\n".join(s + ["</svg>\n"])


def colour(t):
    t = max(0.0, min(1.0, t))
    r, g = (220.0, 60 + 2 * t * 160) if t < 0.5 else (220 - (t - 0.5) * 2 * 180, 220.0)
    return f"rgb({int(r)},{int(g)},70)"


def heatmaps(pk, title, subtitle):
    """One heatmap per model, in the style of `attn needle`: length across, depth down. pk: {name: {lengths,
    depths, accuracy[length][depth], mean}}."""
    cw, ch, gap = 52, 24, 36
    names = list(pk)
    cols = 3
    first = pk[names[0]]
    gw = 70 + cw * len(first["lengths"])
    gh = 40 + ch * len(first["depths"]) + 30
    width = cols * gw + (cols - 1) * gap + 40
    height = 70 + math.ceil(len(names) / cols) * (gh + 20)
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="20" y="22" font-size="15">{title}</text>',
         f'<text x="20" y="40" fill="#555">{subtitle}</text>']
    for n, name in enumerate(names):
        r = pk[name]
        ox = 20 + (n % cols) * (gw + gap)
        oy = 60 + (n // cols) * (gh + 20)
        s.append(f'<text x="{ox}" y="{oy + 14}" font-size="12">{name} (mean {r["mean"]:.2f})</text>')
        for j, d in enumerate(r["depths"]):
            s.append(f'<text x="{ox + 62}" y="{oy + 40 + ch * j + 16}" text-anchor="end">{int(round(d * 100))}%</text>')
            for i, L in enumerate(r["lengths"]):
                a = r["accuracy"][i][j]
                x, y = ox + 66 + cw * i, oy + 24 + ch * j + 0
                s.append(f'<rect x="{x}" y="{y + 16}" width="{cw - 1}" height="{ch - 1}" fill="{colour(a)}"/>')
                s.append(f'<text x="{x + cw / 2}" y="{y + 32}" text-anchor="middle">{a:.2f}</text>')
        for i, L in enumerate(r["lengths"]):
            s.append(f'<text x="{ox + 66 + cw * (i + 0.5)}" y="{oy + 40 + ch * len(r["depths"]) + 14}" text-anchor="middle">{L}</text>')
    return "\n".join(s + ["</svg>\n"])


