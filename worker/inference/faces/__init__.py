"""Faces: the MTCNN detector and choosing and cropping faces as the checkpoints were trained."""
