//! Per-instance agent: exact established-connection counts, CloudWatch publishing, a cap-aware health endpoint.
