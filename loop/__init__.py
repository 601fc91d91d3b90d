"""The active-learning loop: query strategies, learners, the simulator and resumable rounds."""
