//! End-to-end tests live in `tests/`. The library holds what they share that is more than a
//! fixture: a client for the Kubernetes CRI, to drive a real container runtime as the kubelet
//! does.

pub mod cri;
