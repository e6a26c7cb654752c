"""2-D maps of a collection: coordinates (t-SNE, UMAP or PCA), a PNG coloured by cluster, and a
self-contained interactive HTML page (canvas scatter, hover thumbnails, zoom and pan, legend).

The HTML page loads nothing from anywhere: its script, style and thumbnails (small base64 JPEG data
URIs) are inline, so it can be mailed or opened offline. Thumbnails are capped (`max_thumbnails`)
because each costs ~2 kB; beyond the cap a stratified sample of every cluster gets one and the page
says how many were embedded.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from curata.atomic import atomic_write_parquet
from curata.cluster.core import ClusterInputError, _pyplot, check_matrix, normalise, reduce, save_figure
from curata.storage import location

MAP_METHODS = ("auto", "tsne", "umap", "pca")
TSNE_LIMIT = 20000  # above this many items t-SNE takes many minutes on a laptop; "auto" switches to UMAP
DEFAULT_MAX_THUMBNAILS = 2000
THUMB_SIZE = 64
TEXT_CHARS = 100  # text shown on hover, per item

# 20 distinguishable colours (tab20-like order: strong hues first), then cycled; noise is grey.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
           "#dbdb8d", "#637939")
NOISE_COLOUR = "#b0b0b0"


def cluster_colour(c: int) -> str:
    return NOISE_COLOUR if c < 0 else PALETTE[c % len(PALETTE)]


def embed_2d(x: Any, method: str = "auto", seed: int = 0, normalisation: str = "l2") -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of `x` and the method used ("auto": t-SNE up to TSNE_LIMIT items,
    then UMAP if installed, else PCA)."""
    if method not in MAP_METHODS:
        raise ClusterInputError(f"unknown map method '{method}': use one of {', '.join(MAP_METHODS)}")
    x = normalise(check_matrix(x), normalisation)
    n = len(x)
    if method == "auto":
        method = "tsne" if n <= TSNE_LIMIT else "umap"
        if method == "umap":
            try:
                import umap  # noqa: F401
            except ImportError:
                method = "pca"
    if method in ("tsne", "umap") and n < 4:
        method = "pca"  # neither embeds 2-3 points meaningfully
    if method == "pca":
        xy = reduce(x, "pca", 2, seed)
        if xy.shape[1] < 2:  # one informative direction: put everything on a line
            xy = np.hstack([xy, np.zeros((n, 2 - xy.shape[1]))])
    else:
        xy = reduce(x, method, 2, seed, n_neighbors=15)  # a map shows local structure: UMAP's default
    return np.asarray(xy, dtype=np.float64), method


def plot_map(xy: np.ndarray, labels: Sequence[int] | np.ndarray, path: str | Path, names: dict[int, str] | None = None,
             title: str = "") -> Path:
    """Scatter PNG of the map, one colour per cluster, a legend of (up to 20) cluster names."""
    plt = _pyplot()
    labels = np.asarray(labels)
    names = names or {}
    clusters, sizes = np.unique(labels, return_counts=True)
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    size = float(np.clip(3000 / max(len(labels), 1), 1, 25))
    for c in clusters[np.argsort(-sizes)]:
        members = labels == c
        label = f"{names.get(int(c), f'cluster {c}')} ({int(members.sum())})"
        ax.scatter(xy[members, 0], xy[members, 1], s=size, c=cluster_colour(int(c)), label=label, alpha=0.75,
                   linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    if len(clusters) <= 20:
        ax.legend(fontsize=7, markerscale=max(1.0, 12 / size) ** 0.5, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    return save_figure(fig, path)


def thumbnail_data_uri(source: str | Path | bytes, size: int = THUMB_SIZE, quality: int = 70) -> str:
    """A small JPEG of the image (longest side `size`) as a data: URI, loaded with the shared loader."""
    from PIL import Image

    from curata.imageio import load_image

    im = Image.fromarray(load_image(source, max_side=size * 2))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_sample(labels: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Row indices to thumbnail: all if they fit under `cap`, else a sample of every cluster
    proportional to its size (at least one each), so small clusters are never left without pictures."""
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(len(rows), max(1, round(cap * len(rows) / n)))
        chosen.append(rng.choice(rows, take, replace=False))
    picked = np.concatenate(chosen)
    if len(picked) > cap:
        picked = rng.choice(picked, cap, replace=False)
    return np.sort(picked)


def make_thumbnails(images: Sequence[str | None], rows: np.ndarray, size: int = THUMB_SIZE, workers: int = 4
                    ) -> dict[int, str]:
    """Data URIs for the given rows (decoded in parallel; an image that fails to load gets none)."""

    def one(i: int) -> tuple[int, str | None]:
        source = images[i]
        if not source:
            return i, None
        try:
            return i, thumbnail_data_uri(source, size)
        except (OSError, ValueError):  # ImageError is a ValueError
            return i, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {i: uri for i, uri in pool.map(one, [int(r) for r in rows]) if uri is not None}


def _json_for_script(payload: Any) -> str:
    # Inside <script>, "</script>" or "<!--" in user text would end or corrupt the block: escape < > &.
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def interactive_map(xy: np.ndarray, labels: Sequence[int] | np.ndarray, ids: Sequence[str], path: str | Path, *,
                    names: dict[int, str] | None = None, images: Sequence[str | None] | None = None,
                    texts: Sequence[str | None] | None = None, max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
                    thumb_size: int = THUMB_SIZE, title: str = "curata map", seed: int = 0) -> dict[str, Any]:
    """Write the self-contained HTML map; returns {"path", "items", "thumbnails", "thumbnail_cap_hit"}."""
    labels = np.asarray(labels, dtype=int)
    xy = np.asarray(xy, dtype=np.float64)
    n = len(labels)
    if xy.shape != (n, 2) or len(ids) != n:
        raise ValueError(f"xy {xy.shape}, ids {len(ids)} and labels {n} must describe the same items")
    names = names or {}
    thumbs: dict[int, str] = {}
    if images is not None and max_thumbnails > 0:
        thumbs = make_thumbnails(images, thumbnail_sample(labels, max_thumbnails, seed), thumb_size)
    # Normalise coordinates to [0, 1] so the page needs no knowledge of the embedding's scale.
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    unit = (xy - lo) / np.where(span > 0, span, 1)
    thumb_list = list(thumbs.values())
    thumb_index = {row: j for j, row in enumerate(thumbs)}
    clusters, sizes = np.unique(labels, return_counts=True)
    payload = {
        "x": [round(float(v), 4) for v in unit[:, 0]],
        "y": [round(float(v), 4) for v in unit[:, 1]],
        "c": labels.tolist(),
        "id": [str(i) for i in ids],
        "t": [thumb_index.get(i, -1) for i in range(n)],
        "text": [("" if t is None else str(t))[:TEXT_CHARS] for t in texts] if texts is not None else None,
        "thumbs": thumb_list,
        "clusters": [{"c": int(c), "n": int(s), "name": names.get(int(c), f"cluster {c}"),
                      "colour": cluster_colour(int(c))} for c, s in sorted(zip(clusters, sizes, strict=True),
                                                                          key=lambda cs: -cs[1])],
    }
    note = (f"{n} items; thumbnails for all {len(thumbs)}" if len(thumbs) == n else
            f"{n} items; thumbnails embedded for {len(thumbs)} of them"
            + (f" (capped at {max_thumbnails}, a sample of every cluster)" if n > max_thumbnails else ""))
    page = (_PAGE.replace("__TITLE__", html.escape(title)).replace("__NOTE__", html.escape(note))
            .replace("__DATA__", _json_for_script(payload)))
    path = location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return {"path": str(path), "items": n, "thumbnails": len(thumbs), "thumbnail_cap_hit": n > max_thumbnails}


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{margin:0;font:13px system-ui,sans-serif;color:#222;display:flex;height:100vh}
#main{flex:1;position:relative;min-width:0}
canvas{width:100%;height:100%;display:block;cursor:crosshair}
#side{width:280px;overflow:auto;border-left:1px solid #ddd;padding:8px;box-sizing:border-box}
#side h1{font-size:15px;margin:0 0 4px}#note{color:#666;font-size:11px;margin-bottom:8px}
.row{display:flex;align-items:center;gap:6px;padding:2px 4px;cursor:pointer;border-radius:3px}
.row:hover{background:#f0f0f0}.row.off{opacity:.35}.sw{width:11px;height:11px;border-radius:50%;flex:none}
.row .n{color:#888;margin-left:auto}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #bbb;border-radius:4px;padding:6px;
max-width:240px;box-shadow:0 2px 6px rgba(0,0,0,.2);display:none}
#tip img{display:block;margin-bottom:4px;image-rendering:auto}#tip .id{font-weight:600;word-break:break-all}
#tip .cl{color:#555}#tip .tx{color:#444;font-size:12px}
#help{position:absolute;left:8px;bottom:6px;color:#888;font-size:11px}
</style></head><body>
<div id="main"><canvas id="map"></canvas><div id="tip"></div>
<div id="help">wheel: zoom · drag: pan · double-click: reset · click a cluster name to show or hide it</div></div>
<div id="side"><h1>__TITLE__</h1><div id="note">__NOTE__</div><div id="legend"></div></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function(){
"use strict";
var D=JSON.parse(document.getElementById("data").textContent);
var N=D.x.length,canvas=document.getElementById("map"),ctx=canvas.getContext("2d"),tip=document.getElementById("tip");
var colour={},name={},hidden={},view={s:1,tx:0,ty:0},W=0,H=0,dpr=window.devicePixelRatio||1,hover=-1;
D.clusters.forEach(function(k){colour[k.c]=k.colour;name[k.c]=k.name;});
var images=D.thumbs.map(function(u){var im=new Image();im.src=u;return im;});
var r=N>20000?1.5:N>3000?2.5:4;
function resize(){var b=canvas.getBoundingClientRect();W=b.width;H=b.height;canvas.width=W*dpr;canvas.height=H*dpr;
ctx.setTransform(dpr,0,0,dpr,0,0);draw();}
function px(i){var m=24,w=W-2*m,h=H-2*m,s=Math.min(w,h);
return[m+(w-s)/2+(D.x[i]*s)*view.s+view.tx,m+(h-s)/2+((1-D.y[i])*s)*view.s+view.ty];}
function draw(){ctx.clearRect(0,0,W,H);
for(var i=0;i<N;i++){var c=D.c[i];if(hidden[c])continue;var p=px(i);
if(p[0]<-5||p[1]<-5||p[0]>W+5||p[1]>H+5)continue;ctx.fillStyle=colour[c];ctx.globalAlpha=.8;
ctx.beginPath();ctx.arc(p[0],p[1],r,0,6.2832);ctx.fill();}
ctx.globalAlpha=1;if(hover>=0){var q=px(hover);ctx.strokeStyle="#000";ctx.lineWidth=1.5;ctx.beginPath();
ctx.arc(q[0],q[1],r+3,0,6.2832);ctx.stroke();}}
function nearest(mx,my){var best=-1,bd=100;for(var i=0;i<N;i++){if(hidden[D.c[i]])continue;var p=px(i),
dx=p[0]-mx,dy=p[1]-my,d=dx*dx+dy*dy;if(d<bd){bd=d;best=i;}}return best;}
function show(i,mx,my){tip.textContent="";if(i<0){tip.style.display="none";return;}
if(D.t[i]>=0){var im=document.createElement("img");im.src=images[D.t[i]].src;tip.appendChild(im);}
var a=document.createElement("div");a.className="id";a.textContent=D.id[i];tip.appendChild(a);
var b=document.createElement("div");b.className="cl";b.textContent=name[D.c[i]];tip.appendChild(b);
if(D.text&&D.text[i]){var t=document.createElement("div");t.className="tx";t.textContent=D.text[i];tip.appendChild(t);}
tip.style.display="block";tip.style.left=Math.min(mx+14,W-250)+"px";tip.style.top=Math.min(my+14,H-160)+"px";}
var drag=null,pending=false,last=null;
canvas.addEventListener("mousemove",function(e){var b=canvas.getBoundingClientRect(),mx=e.clientX-b.left,
my=e.clientY-b.top;
if(drag){view.tx=drag.tx+mx-drag.x;view.ty=drag.ty+my-drag.y;draw();return;}
last=[mx,my];if(pending)return;pending=true;
requestAnimationFrame(function(){pending=false;var i=nearest(last[0],last[1]);
if(i!==hover){hover=i;draw();}show(i,last[0],last[1]);});});
canvas.addEventListener("mouseleave",function(){hover=-1;show(-1);draw();});
canvas.addEventListener("mousedown",function(e){var b=canvas.getBoundingClientRect();
drag={x:e.clientX-b.left,y:e.clientY-b.top,tx:view.tx,ty:view.ty};});
window.addEventListener("mouseup",function(){drag=null;});
canvas.addEventListener("wheel",function(e){e.preventDefault();var b=canvas.getBoundingClientRect(),mx=e.clientX-b.left,
my=e.clientY-b.top,f=e.deltaY<0?1.2:1/1.2;view.tx=mx-(mx-view.tx)*f;view.ty=my-(my-view.ty)*f;view.s*=f;draw();},
{passive:false});
canvas.addEventListener("dblclick",function(){view={s:1,tx:0,ty:0};draw();});
var legend=document.getElementById("legend");
D.clusters.forEach(function(k){var row=document.createElement("div");row.className="row";
var sw=document.createElement("span");sw.className="sw";sw.style.background=k.colour;
var nm=document.createElement("span");nm.textContent=k.name;var n=document.createElement("span");n.className="n";
n.textContent=k.n;row.appendChild(sw);row.appendChild(nm);row.appendChild(n);
row.addEventListener("click",function(){hidden[k.c]=!hidden[k.c];row.classList.toggle("off");draw();});
legend.appendChild(row);});
window.addEventListener("resize",resize);resize();
})();
</script></body></html>
"""


def write_assignments(root: str | Path, run_name: str, ids: Sequence[str], labels: Sequence[int] | np.ndarray,
                      xy: np.ndarray | None = None) -> Path:
    """`<root>/clusters/<run_name>.parquet` with columns id, cluster, x, y (x, y null without a map)."""
    import pandas as pd

    labels = np.asarray(labels, dtype=np.int64)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids for {len(labels)} labels")
    frame = pd.DataFrame({
        "id": [str(i) for i in ids],
        "cluster": labels,
        "x": xy[:, 0].astype(np.float32) if xy is not None else np.full(len(labels), np.nan, np.float32),
        "y": xy[:, 1].astype(np.float32) if xy is not None else np.full(len(labels), np.nan, np.float32),
    })
    folder = location(root) / "clusters"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_name}.parquet"
    atomic_write_parquet(frame, path)  # readers never see a half-written file
    return path
