"""Shadow human evaluation: the review queue, its sampling design, rubric, agreement and report (docs/review.md)."""
