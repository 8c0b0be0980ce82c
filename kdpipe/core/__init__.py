"""What every layer uses: errors and exit codes, the config model, run-directory files, the
terminal, untrusted structured files and image decoding. Imports nothing else of kdpipe."""
