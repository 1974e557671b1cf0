"""The gRPC bridge service."""
