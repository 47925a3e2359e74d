"""Facts about the mera-multi distribution shared by both commands (mera-serve and mera-eval)."""
