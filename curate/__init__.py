"""Curation: ingest and validation, deduplication, label-noise and bias scoring, reports, export."""
