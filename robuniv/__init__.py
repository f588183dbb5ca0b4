"""robuniv: are adversarially robust neural networks universal?

The library behind the robuniv Snakemake workflow. It knows nothing of Snakemake:
paths and parameters arrive as arguments.
"""

__version__ = "0.1.0"
