"""The leaves: errors, path/key rules, configuration and named zones. They import nothing of
zonefs above them, and everything else may import them."""
