"""The gRPC front door: servicer (translation only), error map, server set-up."""
