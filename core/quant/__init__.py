"""Quantization arithmetic shared by Inspect, Quantize and QAT."""
