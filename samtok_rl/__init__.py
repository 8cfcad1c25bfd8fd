"""samtok-rl: GRPO post-training for SAMTok vision-language models."""
