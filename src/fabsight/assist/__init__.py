"""Explanations, questions and golden comparison for wafer maps (MISSION W6–W8, W11, W12).

Everything here is grounded in measurements: :mod:`facts` measures, :mod:`explain` words
the facts, :mod:`qa` answers questions from them, :mod:`compare` tests a wafer against a
golden map or baseline, :mod:`vlm` optionally asks a vision-language model beside the
grounded answer, and :mod:`sft` exports fine-tuning data for such a model.
"""
