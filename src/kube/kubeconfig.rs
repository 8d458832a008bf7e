//! kubeconfig files and in-cluster service accounts -> `Access` (stub; being written)
