"""Vision-language teachers (OpenCLIP, ConSE), their registry, and CoOp prompt calibration."""
