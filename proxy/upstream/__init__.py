"""The upstream seam: the provider contract, and the HTTP machinery providers compose."""
