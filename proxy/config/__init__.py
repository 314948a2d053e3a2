"""The YAML config: `load` reads the file once and validates every section into typed
settings; `options` is the typed, located view of one block that providers read too."""
