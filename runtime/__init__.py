"""What ships to the device: preprocessing contract, dataset manifests, metrics.

This package must never import torch (tests/test_runtime_no_torch.py enforces it):
it installs on a device that has only numpy, pillow, pyyaml and an inference engine.
"""
