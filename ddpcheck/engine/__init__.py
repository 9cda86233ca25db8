"""Engine: the run loops on the launcher (connect, stage 0, launch, gather), I/O at this edge."""
