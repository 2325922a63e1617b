"""cutover: the data path and its control plane."""
