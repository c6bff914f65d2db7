"""Moved to :mod:`zscir.generation` (captioners and editors behind one registry).

This module keeps the old import path working for code and tests written against it;
new code imports from :mod:`zscir.generation.registry`, :mod:`zscir.generation.base`,
:mod:`zscir.generation.blip` and :mod:`zscir.generation.lookup`.
"""

from zscir.generation.base import Captioner
from zscir.generation.lookup import (CAPTION_FIELDS, CAPTION_FILE_READERS, ID_FIELDS, WORLD_CAPTIONS, CaptionTable,
                                     FileCaptioner, LookupCaptioner, ShapesWorldCaptioner, WebdatasetTextCaptioner,
                                     WorldCaption, read_caption_file, read_world_captions)
from zscir.generation.registry import CAPTIONERS, build_captioner

__all__ = ["CAPTIONERS", "CAPTION_FIELDS", "CAPTION_FILE_READERS", "ID_FIELDS", "WORLD_CAPTIONS", "CaptionTable",
           "Captioner", "FileCaptioner", "LookupCaptioner", "ShapesWorldCaptioner", "WebdatasetTextCaptioner",
           "WorldCaption", "build_captioner", "read_caption_file", "read_world_captions"]
