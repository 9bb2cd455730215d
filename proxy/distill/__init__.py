"""`guardline distill`: a policy's audit trail turned into training data for its own head."""
