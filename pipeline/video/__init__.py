"""Video: frames as a chain of jobs tied by optical flow (Ruder et al. 2016)."""
