"""QuantTune's engine: plain Python over torch, transformers, peft and bitsandbytes.

Nothing in this package imports Qt; the desktop face and the CLI both call the jobs here.
"""

__version__ = "0.1.0"
