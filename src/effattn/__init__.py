"""effattn: export, build and serve networks with Efficient Attention (Shen et al., WACV 2021)."""

__version__ = "0.1.0"
