"""Videos: bounded demuxing and decoding of sampled frames, the sampling plan, the across-frame rule."""
