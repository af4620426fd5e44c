"""The partner application's access: bearer tokens in, signed callbacks out."""
