"""cai: Constitutional AI training (SL-CAI, RLAIF) on the Hugging Face stack."""

__version__ = "0.1.0"
