"""The engine layer: the stage-major runner, executors (local, Ray), the run directory, config and inputs."""
