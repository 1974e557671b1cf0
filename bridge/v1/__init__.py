"""Generated gRPC stubs of the kernelpit.v1 contract (proto/kernelpit/v1); do not edit."""
