"""What a study reports: test metrics, statistics, the markdown report and its figures."""
