"""The faces stage and its internals: tracking, O-net refinement, the FaceTrack artifact, memory trimming."""

from stages.faces.stage import STAGE, Config

__all__ = ["STAGE", "Config"]
