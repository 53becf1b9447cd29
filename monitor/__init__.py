"""monitor: watch a production RLHF assistant and catch its reward model diverging from users."""

__version__ = "0.1.0"
