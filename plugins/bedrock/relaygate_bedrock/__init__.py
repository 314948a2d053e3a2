"""Amazon Bedrock providers for relaygate (`type: bedrock` and `type: bedrock-openai`)."""

__version__ = "0.1.0"
