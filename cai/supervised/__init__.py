"""SL-CAI: critique-revision chains (`chains`) and the `generate` and `sft` stages (`stages`)."""
