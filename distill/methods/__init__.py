"""Distillation methods: what each stage trains, freezes and optimises (registry in ``registry.py``)."""
