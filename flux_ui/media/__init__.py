"""Images in and out: decoding and limits, uploads, PNG metadata, control maps."""
