"""Participation figures for reviews and the annual assessment: tables, charts, exports."""
