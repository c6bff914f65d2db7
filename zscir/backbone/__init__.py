"""The frozen CLIP backbone layer over open_clip."""

from zscir.backbone.clip import PLACEHOLDER, Backbone, ImageFeatures
from zscir.backbone.loading import load_backbone, register_model_configs, resolve_identity
from zscir.backbone.preprocess import Preprocess, make_preprocess, target_pad

register_model_configs()

__all__ = ["PLACEHOLDER", "Backbone", "ImageFeatures", "load_backbone", "register_model_configs",
           "resolve_identity", "Preprocess", "make_preprocess", "target_pad"]
