"""thresher: data-centric curation and annotation for text classification and LLM fine-tuning."""

__version__ = "0.1.0"
