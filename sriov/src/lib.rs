//! sriov
