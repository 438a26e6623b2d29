"""Images: headers read with caps, bounded decoding (in process or in child processes), animations."""
