"""Data builders and scripts the tests share. Not tests: pytest collects nothing here."""
