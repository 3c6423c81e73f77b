//! Helpers shared by the integration tests (test host harness).
