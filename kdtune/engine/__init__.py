"""The engine: pure PyTorch (data, models, losses, training, teacher store and logit cache); never imports Ray."""
