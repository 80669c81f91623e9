"""Plain PyTorch/peft fine-tuning, evaluation and inference for Niche (no Django imports)."""
