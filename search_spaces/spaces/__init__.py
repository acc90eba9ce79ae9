"""Built-in search space definitions (TOML files shipped inside the wheel)."""
