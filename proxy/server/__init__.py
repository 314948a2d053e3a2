"""The aiohttp app and the journey of one request through the hook chain."""
