"""tierflow ops console."""
