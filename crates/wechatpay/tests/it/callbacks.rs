//! Callback verification is covered in depth by `notify` tests; see callbacks_* below.
