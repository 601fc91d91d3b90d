"""Review in Argilla: an embedded server, push with priority, pull with agreement."""
