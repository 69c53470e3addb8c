#!/usr/bin/env python3
"""The training curve as an SVG (no plotting library needed): bits per byte against step, the
training loss (a moving average of 25 steps) and the validation loss on held-out books.

usage: plot_training.py training_log.csv out.svg"""
import csv, math, sys

rows = list(csv.DictReader(open(sys.argv[1])))
steps = [int(r["step"]) for r in rows]
train = [float(r["loss"]) / math.log(2) for r in rows]
val = [(int(r["step"]), float(r["validation_loss"]) / math.log(2)) for r in rows if r["validation_loss"]]
smooth = [sum(train[max(0, i - 24):i + 1]) / len(train[max(0, i - 24):i + 1]) for i in range(len(train))]
W, H, L, R, T, B = 720, 400, 60, 20, 30, 50
xmax = max(steps)
ymax = min(8.5, max(smooth[3:] or smooth) * 1.05)
ymin = max(0.0, min([v for _, v in val] + smooth) * 0.9)
def X(s): return L + (W - L - R) * s / xmax
def Y(v): return T + (H - T - B) * (1 - (min(v, ymax) - ymin) / (ymax - ymin))
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">training of the byte-level model (bits per byte)</text>']
for i in range(6):
    v = ymin + (ymax - ymin) * i / 5
    out.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{L-6}" y="{Y(v)+4:.1f}" text-anchor="end">{v:.2f}</text>')
for i in range(6):
    s = xmax * i / 5
    out.append(f'<text x="{X(s):.1f}" y="{H-B+18}" text-anchor="middle">{int(s)}</text>')
out.append(f'<text x="{(L+W-R)/2}" y="{H-10}" text-anchor="middle">optimizer step</text>')
pts = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in zip(steps, smooth))
out.append(f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
if val:
    out.append('<polyline points="' + " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in val) + '" fill="none" stroke="#d62728" stroke-width="1.5"/>')
    for s, v in val:
        out.append(f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="3" fill="#d62728"/>')
    out.append(f'<text x="{X(val[-1][0])-4:.1f}" y="{Y(val[-1][1])-8:.1f}" text-anchor="end" fill="#d62728">validation {val[-1][1]:.3f}</text>')
out.append(f'<text x="{W-R-4}" y="{T+14}" text-anchor="end" fill="#1f77b4">training (25-step average)</text>')
out.append('</svg>')
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print(f"{sys.argv[2]}: {len(rows)} steps, last validation {val[-1][1]:.3f} bits/byte" if val else sys.argv[2])
