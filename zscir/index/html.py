"""A self-contained HTML page of retrieval results: every image inlined as a base64 thumbnail.

One file, no external stylesheet, script or image: it can be mailed, attached
to an issue or opened offline and shows the same thing.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Sequence

from PIL import Image

from zscir.data.images import BadImageError, decode_image, to_rgb
from zscir.features.sources import fs_name, safe_name
from zscir.index.retriever import QueryResult
from zscir.utils.atomic import atomic_write_text

THUMB = 192

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin: 0 0 8px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 16px; margin-bottom: 24px; }
.query { display: flex; gap: 16px; align-items: center; margin-bottom: 12px; }
.text { font-size: 18px; } .text::before { content: "\\201C"; } .text::after { content: "\\201D"; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: %(t)dpx; text-align: center; font-size: 12px; }
figure img { width: %(t)dpx; height: %(t)dpx; object-fit: contain; background: #eee; border-radius: 4px; }
figure.ref img { outline: 3px solid #3a7; }
figcaption { overflow-wrap: anywhere; } .score { color: #666; }
.missing { width: %(t)dpx; height: %(t)dpx; display: flex; align-items: center; justify-content: center;
           background: #eee; color: #a33; border-radius: 4px; }
""" % {"t": THUMB}


def thumbnail_data_uri(source: str | os.PathLike | Image.Image | None, size: int = THUMB) -> str | None:
    """A JPEG thumbnail as a data: URI, or None when the image cannot be read.

    A path is decoded by the project's one decoder (``zscir.data.images``), so the page shows
    what the model saw; a bytes-safe id path (``\\xNN`` escapes) is turned back into the file name.
    """
    try:
        if isinstance(source, Image.Image):
            im = to_rgb(source).copy()
        elif source is None:
            return None
        else:
            path = fs_name(str(source)) if isinstance(source, str) else source
            with open(path, "rb") as f:
                im = decode_image(f.read(), str(source))
    except (BadImageError, OSError):  # a missing or unreadable thumbnail must not stop the page
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(uri: str | None, caption: str, css_class: str = "") -> str:
    img = f'<img src="{uri}" alt="{html.escape(caption)}">' if uri else '<div class="missing">unreadable</div>'
    return f'<figure class="{css_class}">{img}<figcaption>{caption}</figcaption></figure>'


def render_html(results: Sequence[QueryResult], title: str = "zscir retrieval",
                ref_images: Sequence[Image.Image | None] | None = None, subtitle: str = "") -> str:
    sections = []
    for n, res in enumerate(results):
        ref_src = ref_images[n] if ref_images is not None and ref_images[n] is not None else res.ref
        ref = _figure(thumbnail_data_uri(ref_src), "reference<br>" + html.escape(safe_name(os.path.basename(res.ref))), "ref")
        hits = "".join(
            _figure(thumbnail_data_uri(h.path),
                    f'#{h.rank} <span class="score">{h.score:.3f}</span><br>{html.escape(safe_name(h.id))}', "hit")
            for h in res.hits)
        sections.append(f'<section><div class="query">{ref}<div class="text">{html.escape(safe_name(res.text))}</div></div>'
                        f'<h2>top {len(res.hits)}</h2><div class="grid">{hits}</div></section>')
    title, subtitle = safe_name(title), safe_name(subtitle)  # file names need not be UTF-8; the page is
    sub = f"<p>{html.escape(subtitle)}</p>" if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{sub}{"".join(sections)}</body></html>\n')


def write_html(path: str | os.PathLike, results: Sequence[QueryResult], **kwargs) -> None:
    atomic_write_text(path, render_html(results, **kwargs))
