"""Distillation loss terms as pure functions of tensors (methods-spec sections 1-3), each unit-tested
against hand-computed values. Methods combine them; nothing here holds parameters."""
