"""Exporters of finished results into other tools (`normbench export ...`)."""
