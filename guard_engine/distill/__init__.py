"""Training a policy's own embedded head (`guardline distill`), and the training code the
shipped head's script (scripts/train_embedded_head.py) shares with it."""
