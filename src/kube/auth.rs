//! Credentials (stub; being written)
