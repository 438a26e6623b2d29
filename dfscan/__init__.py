"""dfscan: scan images for deepfakes at scale."""

__version__ = "0.1.0"
