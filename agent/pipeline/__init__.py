"""The recording pipeline: capture (or a file) -> resample -> vad -> encode -> seal, driven
by the recorder into the spool. Data flows one way; nothing here knows the gateway link."""
