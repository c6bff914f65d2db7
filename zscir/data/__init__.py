"""Unlabeled image sources, the resumable caption cache and the caption splitter (captioners: zscir.generation).

    from zscir.data.sources import open_image_source       # --images PATH -> ImageItem(id, load(), content_hash)
    from zscir.data.keys import safe_name, content_key     # the one id and key scheme of every image
    from zscir.generation.registry import build_captioner  # "blip", "lavis", "file", "webdataset-txt", "shapes-world"
    from zscir.data.caption_cache import caption_images    # resumable: id -> caption
    from zscir.data.splitter import split_caption          # caption -> (subject, attribute) or None
"""
