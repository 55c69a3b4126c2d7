"""Applications built on jetbook's machinery other than the exchange (docs/FRAMEWORK.md)."""
