//! ebs-blockdev
