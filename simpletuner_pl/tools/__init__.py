"""Command-line tools around training: converting SimpleTuner configs and LoRA files."""
