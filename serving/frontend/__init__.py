"""Protocol adapters: the only code that imports generated protobuf or HTTP types."""
