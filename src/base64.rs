//! base64 (stub; being written)
