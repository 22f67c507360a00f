"""The listening page: read a results folder against its manifest, and build the static page of
key results, figures, the trials table and the audio table."""
