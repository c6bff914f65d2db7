"""Supervised CIR heads on a BLIP-2 (transformers ``Blip2ForImageTextRetrieval``): FineCIR as published and
FashionBLIP-2. Each head takes the model object itself, so it works with any loader that gives one.

A head's hyper-parameters are its recipe, ``recipes/<head>.json`` (``head_options`` for the
head, ``training`` for the loop, ``sources`` saying where each number comes from).
The CLIP heads (Combiner, the FineCIR-style "finecir-clip") are in :mod:`zscir.models.supervised`.
"""
