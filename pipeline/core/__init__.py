"""The core layer: errors and exit codes, config fields, the content-addressed cache, clip jobs, decoding."""
