"""Shared test set-up. litellm must never reach the network at import."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
